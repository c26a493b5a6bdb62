"""Shared fixtures: the bundled tiny tokenizer, loaded once per session."""

from pathlib import Path

import pytest

TINY = Path(__file__).resolve().parent.parent / "src" / "forgetless" / "assets" / "tiny"


@pytest.fixture(scope="session")
def tokenizer():
    try:
        from forgetless.model import load_tokenizer
    except ImportError:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(TINY))
    return load_tokenizer("tiny")
