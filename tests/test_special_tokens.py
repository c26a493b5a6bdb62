"""BOS and end-of-turn as each model family expects them, on tokenizers built offline with the
`tokenizers` library from the families' real settings: special tokens, whether the tokenizer puts
BOS in front of a text (its tokenizer.json post-processor), tokenizer_config fields and the real
chat templates (tests/fixtures/chat_templates). The vocabulary is bytes only; the special tokens
are what is under test."""

import json
from pathlib import Path

import pytest
import torch
from helpers.fake_lm import BigramLM
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer

from forgetless.data import Example, Task, TaskStream
from forgetless.data.tokenize import IGNORE, bos_token, render_prompt, special_tokens, tokenize_stream
from forgetless.evaluate import evaluate_task, general_perplexity
from forgetless.replay.gere import build_general_samples

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"

# family: special tokens (in id order), the BOS the tokenizer adds itself (None: none), the
# tokenizer_config fields, the chat template, and the token that ends an assistant turn
FAMILIES = {
    # Meta-Llama-3-8B-Instruct as first released: eos <|end_of_text|>, turns end with <|eot_id|>
    "llama3": (["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"],
               "<|begin_of_text|>",
               {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}, "llama3.jinja", "<|eot_id|>"),
    # gemma-3-270m-it: add_bos_token true (the GGUF of gemma-3-270m says so too), eos <eos>
    "gemma3": (["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], "<bos>",
               {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "add_bos_token": True,
                "add_eos_token": False}, "gemma3.jinja", "<end_of_turn>"),
    # Qwen2.5 (base): no BOS, eos <|endoftext|>, the chat template ends turns with <|im_end|>
    "qwen2_5": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None,
                {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
                "qwen2_5.jinja", "<|im_end|>"),
    # SmolLM2-135M-Instruct (its GGUF): bos <|im_start|> never added, eos <|im_end|>
    "smollm2": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None,
                {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
                 "add_bos_token": False}, "smollm2.jinja", "<|im_end|>"),
    # Phi-3: turns end with <|end|>, eos <|endoftext|> (only the end of turn is asserted)
    "phi3": (["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], None,
             {"bos_token": "<s>", "eos_token": "<|endoftext|>"}, "phi3.jinja", "<|end|>"),
}


def build(family, tmp_path):
    specials, adds_bos, config, template, _ = FAMILIES[family]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(specials + ["<s>"] * (family == "phi3") + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{adds_bos} $A", pair=f"{adds_bos} $A {adds_bos} $B", special_tokens=[(adds_bos, vocab[adds_bos])])
    d = tmp_path / family
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096, **config,
           "chat_template": (TEMPLATES / template).read_text()}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    t = AutoTokenizer.from_pretrained(str(d))
    if t.pad_token is None:
        t.pad_token = t.eos_token
    return t


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bos_and_end_of_turn(family, tmp_path):
    tok = build(family, tmp_path)
    _, adds_bos, _, _, turn_end = FAMILIES[family]
    bos = None if adds_bos is None else tok.convert_tokens_to_ids(adds_bos)
    end = tok.convert_tokens_to_ids(turn_end)
    assert bos_token(tok) == bos
    assert special_tokens(tok, chat=True).end == end
    assert (end == tok.eos_token_id) == (family == "smollm2")  # only SmolLM2-Instruct's EOS ends a turn
    assert special_tokens(tok, chat=True).stop == tuple(dict.fromkeys((end, tok.eos_token_id)))
    assert special_tokens(tok).end == tok.eos_token_id and special_tokens(tok).stop == (tok.eos_token_id,)


@pytest.mark.parametrize("family", ["llama3", "gemma3", "qwen2_5", "smollm2"])
def test_training_samples_and_general_samples(family, tmp_path):
    tok = build(family, tmp_path)
    _, adds_bos, _, _, turn_end = FAMILIES[family]
    bos = None if adds_bos is None else tok.convert_tokens_to_ids(adds_bos)
    end = tok.convert_tokens_to_ids(turn_end)
    task = Task("t", "generation", [Example("Capital of France?", " Paris")], [])
    plain = tokenize_stream(TaskStream([task]), tok, 256).samples[0][0]
    chat = tokenize_stream(TaskStream([task]), tok, 256, chat=True).samples[0][0]
    for s, last, chat_mode in ((plain, tok.eos_token_id, False), (chat, end, True)):
        ids = s.input_ids.tolist()
        prompt = tok(render_prompt(tok, "{prompt}", "Capital of France?", chat_mode), add_special_tokens=False)["input_ids"]
        # one BOS in front where the model was trained with one (Llama-3's and Gemma's templates
        # write it themselves: it is not doubled), nothing added where it was not
        if bos is not None:
            assert ids[0] == bos and ids.count(bos) == 1
            assert ids[: len(prompt) + 1] == ([bos] + prompt if prompt[0] != bos else prompt + ids[len(prompt):][:1])
        else:
            assert ids[: len(prompt)] == prompt
        assert ids[-1] == last and s.labels[-1] == last and s.labels[0] == IGNORE
        answer = tok.decode(s.labels[s.labels != IGNORE].tolist()[:-1])
        assert answer == (" Paris" if s is plain else "Paris")
    assert tok.decode(chat.input_ids.tolist()).count("Capital of France?") == 1
    # GeRe's general windows start with the same BOS
    g = build_general_samples(["Some general text. " * 20], tok, 2, 16)
    text = tok("Some general text. " * 20, add_special_tokens=False)["input_ids"]
    assert g[0].input_ids.tolist() == ([bos] + text[:15] if bos is not None else text[:16])


@pytest.mark.parametrize("family", ["llama3", "gemma3", "qwen2_5", "smollm2"])
def test_evaluation_sees_the_training_prompt_and_stops_at_end_of_turn(family, tmp_path):
    """The prompt the model is evaluated on is the training prompt (BOS included), and a chat
    generation ends at the end-of-turn token, not at EOS."""
    tok = build(family, tmp_path)
    end = tok.convert_tokens_to_ids(FAMILIES[family][4])
    V = len(tok)
    answer = tok("Paris", add_special_tokens=False)["input_ids"]
    # answers "Paris", then the end-of-turn token, then would go on with "yz" up to EOS
    seq = answer + [end] + tok("yz", add_special_tokens=False)["input_ids"]
    seq += [tok.eos_token_id] * (end != tok.eos_token_id)
    assert len(set(seq)) == len(seq)
    default, rows = torch.zeros(V), {}
    default[seq[0]] = 20.0
    for a, b in zip(seq, seq[1:]):
        rows.setdefault(a, torch.zeros(V))[b] = 20.0
    ex = Example("Capital of France?", " Paris")
    task = Task("g", "generation", [ex], [ex])
    train = tokenize_stream(TaskStream([task]), tok, 256, chat=True).samples[0][0]
    model = BigramLM(V, rows, default)
    r = evaluate_task(model, tok, task, chat=True, device="cpu")
    assert model.calls[0][0][0].tolist() == train.input_ids[train.labels == IGNORE].tolist()
    assert r.predictions == ["Paris"] and r.accuracy == 1.0 and len(model.calls) == len(answer) + 1
    model.calls.clear()  # without the chat template only EOS ends a generation
    r = evaluate_task(model, tok, task, chat=False, device="cpu", max_new_tokens=12)
    assert r.predictions == ["Paris" if end == tok.eos_token_id else "Parisyz"]


def test_general_perplexity_puts_bos_in_front(tmp_path):
    tok = build("gemma3", tmp_path)
    seen = []

    class Spy(BigramLM):
        def forward(self, input_ids, **kw):
            seen.append(input_ids.clone())
            return super().forward(input_ids, **kw)

    general_perplexity(Spy(len(tok)), tok, ["one text", "another text"], max_length=8)
    assert all(row[0] == tok.bos_token_id for batch in seen for row in batch)
    assert all(len(r) <= 8 for b in seen for r in b)


def test_truncation_keeps_bos_and_the_whole_target(tmp_path):
    from forgetless.data.tokenize import encode

    tok = build("llama3", tmp_path)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    p = tok("abcdefgh", add_special_tokens=False)["input_ids"]
    t = tok(" xy", add_special_tokens=False)["input_ids"]
    ids, labels, cut = encode(tok, "abcdefgh", " xy", 1 + 3 + len(t) + 1)
    assert cut and ids.tolist() == [bos] + p[-3:] + t + [eos]
    assert labels.tolist() == [IGNORE] * 4 + t + [eos]
    ids, _, cut = encode(tok, "abcdefgh", " xy", 3)  # room for BOS + 2 target tokens only
    assert cut and ids.tolist() == [bos] + t[:2]
