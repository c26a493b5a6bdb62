import math

import pytest
import torch

from forgetless.config import LoraConfig, ModelConfig
from forgetless.data.general import general_texts
from forgetless.errors import InputError
from forgetless.model import (TINY_DIR, attach_lora, load_model, load_tokenizer, load_trainable,
                              resolve_model_path, save_trainable, trainable_state)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def test_tiny_loads_through_auto_classes():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(TINY_DIR, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(TINY_DIR, local_files_only=True)
    n = sum(p.numel() for p in model.parameters())
    assert 3_000_000 <= n <= 6_000_000
    assert model.config.tie_word_embeddings and model.config.vocab_size == len(tok)
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert resolve_model_path("tiny") == str(TINY_DIR) and resolve_model_path("a/b") == "a/b"
    assert sum(f.stat().st_size for f in TINY_DIR.iterdir()) < 20e6


def test_tokenizer_roundtrip_and_special_tokens(tok):
    for text in ["Sort: 5 3 9 -> 3 5 9", "12345 + 678 = 13023", "naïve café — 日本語 ✓ Ω"]:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
        assert tok.eos_token_id not in ids  # no BOS/EOS added automatically
    # digits are single tokens: "2026" has four
    assert len(tok("2026", add_special_tokens=False)["input_ids"]) == 4
    assert tok.eos_token == tok.bos_token == "<|endoftext|>"
    assert tok.pad_token == "<pad>" and tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "right"


def test_load_model_full_finetune_is_all_trainable():
    model, tok = load_model(ModelConfig(lora=LoraConfig(enabled=False)), device="cpu")
    assert next(model.parameters()).dtype == torch.float32  # "auto" on CPU
    assert all(p.requires_grad for p in model.parameters())
    assert model.config.pad_token_id == tok.pad_token_id


def test_lora_attaches_only_lora_trainable():
    model, _ = load_model(ModelConfig(lora=LoraConfig(r=4, target_modules=["q_proj", "v_proj", "nope"])))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert any("q_proj" in n for n in names) and not any("k_proj" in n for n in names)
    # 4 layers x 2 modules x (A: r x 256 + B: 256 x r)
    assert sum(p.numel() for p in trainable_state(model).values()) == 4 * 2 * (4 * 256 + 256 * 4)


def test_lora_unknown_targets_is_input_error():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(TINY_DIR, local_files_only=True)
    with pytest.raises(InputError, match="model.lora.target_modules.*q_proj"):
        attach_lora(model, LoraConfig(target_modules=["c_attn"]))


def test_save_load_trainable_roundtrip(tmp_path, tok):
    model, _ = load_model(ModelConfig(lora=LoraConfig(r=4)))
    model.eval()
    x = torch.tensor([tok("First word of: apple pear fig ->")["input_ids"]])
    with torch.no_grad():
        for p in trainable_state(model).values():  # B starts at zero: make the adapters matter
            p.normal_(0, 0.05)
        before = model(input_ids=x).logits.clone()
        save_trainable(model, tmp_path / "t.safetensors")
        for p in trainable_state(model).values():
            p.add_(1.0)
        assert not torch.equal(model(input_ids=x).logits, before)
        load_trainable(model, tmp_path / "t.safetensors")
        assert torch.equal(model(input_ids=x).logits, before)
    other, _ = load_model(ModelConfig(lora=LoraConfig(r=8)))
    with pytest.raises(InputError):
        load_trainable(other, tmp_path / "t.safetensors")


@pytest.mark.parametrize("name", ["./no/such/dir", "/nonexistent/model", "no-such-org-xyz/no-such-model-xyz"])
def test_bad_model_name_is_input_error(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="model.name"):
        load_model(ModelConfig(name=name))


def test_general_texts_split():
    train, held = general_texts("train"), general_texts("heldout")
    assert len(train) > 500 and len(held) > 20
    assert not set(train) & set(held)
    assert all(isinstance(t, str) and t.strip() for t in train + held)
    with pytest.raises(ValueError):
        general_texts("test")


def test_tiny_model_was_trained(tok):
    """Held-out perplexity far below the uniform guess (vocab size, ~4096)."""
    model, _ = load_model(ModelConfig(lora=LoraConfig(enabled=False)), device="cpu")
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for text in general_texts("heldout")[:8]:
            ids = torch.tensor([tok(text)["input_ids"][:128]])
            out = model(input_ids=ids, labels=ids)
            total += out.loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    assert math.exp(total / count) < 200
