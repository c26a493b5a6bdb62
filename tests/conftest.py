"""Shared fixtures: the bundled tiny tokenizer and model, loaded once per session."""

import pytest
import torch

# One thread: the tiny model gains nothing from more, and on a shared 2-core machine two OpenMP
# threads stall each other (measured ~50x slower steps). The library does the same (train.cpu_threads).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    from forgetless.model import load_tokenizer

    return load_tokenizer("tiny")
