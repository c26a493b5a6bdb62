"""data.chat_template: the rule for "auto", training samples with the loss on the assistant turn
only, and evaluation rendering prompts and answers exactly as training does."""

import copy

import pytest
import torch
from helpers.fake_lm import BigramLM

from forgetless.data import Example, Task, TaskStream
from forgetless.data.tokenize import IGNORE, is_instruct, render_prompt, tokenize_stream, use_chat_template
from forgetless.errors import InputError
from forgetless import evaluate as ev
from forgetless.evaluate import evaluate_task

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture
def chat_tok(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = CHATML
    return tok


def ids(tok, s):
    return tok(s, add_special_tokens=False)["input_ids"]


def test_auto_rule(tokenizer, chat_tok):
    assert is_instruct("HuggingFaceTB/SmolLM2-135M-Instruct") and is_instruct("x", "/c/Qwen-chat")
    assert not is_instruct("tiny", "/models/gpt2")
    assert not use_chat_template("auto", tokenizer, "some-Instruct")  # no template
    assert not use_chat_template("auto", chat_tok, "tiny")  # template, but not an instruct model
    assert use_chat_template("auto", chat_tok, "org/Model-Instruct")
    assert use_chat_template(True, chat_tok, "tiny") and not use_chat_template(False, chat_tok, "x-instruct")
    with pytest.raises(InputError, match="data.chat_template.*no chat template"):
        use_chat_template(True, tokenizer, "x")


def test_chat_sample_has_loss_on_the_assistant_turn_only(chat_tok):
    task = Task("t", "generation", [Example("First word of: cat dog ->", " cat")], [])
    s = tokenize_stream(TaskStream([task]), chat_tok, 128, "Q: {prompt}", chat=True).samples[0][0]
    prompt = "<|im_start|>user\nQ: First word of: cat dog -><|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt(chat_tok, "Q: {prompt}", "First word of: cat dog ->", True) == prompt
    p, t = ids(chat_tok, prompt), ids(chat_tok, "cat") + [chat_tok.eos_token_id]  # leading space dropped
    assert s.input_ids.tolist() == p + t
    assert s.labels.tolist() == [IGNORE] * len(p) + t


class Recorder(BigramLM):
    """Uniform next-token logits; keeps every input it is given."""

    def forward(self, input_ids, **kw):
        out = super().forward(input_ids, **kw)
        self.calls[-1] = input_ids.clone()
        return out


def test_evaluation_renders_like_training(chat_tok, monkeypatch):
    ex = Example("Capital of France?", " Paris")
    task = Task("g", "generation", [ex], [ex])
    train = tokenize_stream(TaskStream([task]), chat_tok, 128, chat=True).samples[0][0]
    train_prompt = train.input_ids[train.labels == IGNORE].tolist()
    m = Recorder(len(chat_tok))
    evaluate_task(m, chat_tok, task, max_new_tokens=1, chat=True, device="cpu")
    assert m.calls[0][0].tolist() == train_prompt
    m.calls.clear()
    evaluate_task(m, chat_tok, task, max_new_tokens=1, chat=False, device="cpu")
    assert m.calls[0][0].tolist() == ids(chat_tok, "Capital of France?")

    mc = Task("m", "multiple_choice", [], [Example("Pick:", " Paris", (" Rome", " Paris"), 1)])
    seen = []
    real = ev.score_options
    monkeypatch.setattr(ev, "score_options", lambda m_, p_, o_, *a: seen.append((p_, o_)) or real(m_, p_, o_, *a))
    evaluate_task(m, chat_tok, mc, chat=True, device="cpu")
    p = ids(chat_tok, render_prompt(chat_tok, "{prompt}", "Pick:", True))
    # options scored as the assistant turn's content (no leading space), as trained
    assert seen == [([p], [[ids(chat_tok, "Rome"), ids(chat_tok, "Paris")]])]


def test_run_with_chat_template_and_knowledge_probe(tmp_path):
    """End to end on the tiny model copied as an "instruct" model with a chat template: auto turns
    the template on, and the general-knowledge probe is scored at every stage."""
    import json
    import shutil

    from forgetless import experiment
    from forgetless.config import from_dict
    from forgetless.model import TINY_DIR

    model_dir = tmp_path / "tiny-instruct"
    shutil.copytree(TINY_DIR, model_dir)
    tc = json.loads((model_dir / "tokenizer_config.json").read_text())
    (model_dir / "tokenizer_config.json").write_text(json.dumps({**tc, "chat_template": CHATML}))
    raw = {"name": "c", "model": {"name": str(model_dir), "lora": {"enabled": False}},
           "data": {"tasks": ["first_word", "country_code"], "n_train": 16, "n_test": 4, "general_texts": 0,
                    "general_probe": 6},
           "train": {"steps_per_task": 2, "batch_size": 4}, "eval": {"batch_size": 8},
           "replay": {"strategy": "none"}}
    r = experiment.run(from_dict(raw), tmp_path / "runs", progress=False)
    assert r["chat_template"] is True
    assert len(r["general_probe_acc"]) == 3 and all(0 <= a <= 1 for a in r["general_probe_acc"])
    assert all(6 * a == round(6 * a) for a in r["general_probe_acc"])  # 6 questions each stage
    assert "## General knowledge probe" in (tmp_path / "runs" / "c" / "report.md").read_text()
    raw["data"]["chat_template"] = False
    raw["name"] = "p"
    r = experiment.run(from_dict(raw), tmp_path / "runs", progress=False)
    assert r["chat_template"] is False
