"""Evaluation: exact accuracy on crafted models, batching invariance, perplexity, normalisation."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers.fake_lm import BigramLM, chain_model  # noqa: F401 (chain_model is used by test_scoring)
from transformers.modeling_outputs import CausalLMOutputWithPast

from forgetless.data.task import Example, Task
from forgetless.evaluate import (
    EvalResult, evaluate_task, general_perplexity, greedy_generate, normalize_answer, score_options,
)

TINY_WEIGHTS = Path(__file__).resolve().parent.parent / "src" / "forgetless" / "assets" / "tiny" / "model.safetensors"


def ids(tok, s):
    return tok(s, add_special_tokens=False)["input_ids"]


def logprob_row(V, probs):
    """Log-probabilities with ``probs`` on the given ids and the rest spread uniformly."""
    rest = (1.0 - sum(probs.values())) / (V - len(probs))
    row = torch.full((V,), math.log(rest))
    for t, p in probs.items():
        row[t] = math.log(p)
    return row


@pytest.fixture(scope="module")
def lm(tokenizer):
    """The bundled tiny model once it exists, else a small random Llama with its vocabulary."""
    if TINY_WEIGHTS.exists():
        from forgetless.config import ModelConfig
        from forgetless.model import load_model

        model, _ = load_model(ModelConfig(name="tiny", dtype="float32", lora={"enabled": False}), device="cpu")
        return model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=128, max_position_embeddings=256,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(cfg)


PROMPTS = ["Q: which one? Answer:", "Tell me:", "x:", "A much longer question with many words in it, really:",
           "Short:", "What is the return value of the function defined above:"]


# --- normalisation -----------------------------------------------------------------------------

@pytest.mark.parametrize("raw, norm", [
    ("  Paris. ", "paris"),
    ("New\t York\n", "new york"),
    ("Yes!?", "yes"),
    ("a , b", "a , b"),  # inner punctuation is kept
    ("done .", "done"),  # whitespace left before trailing punctuation goes too
    ("3.5", "3.5"),
    ("", ""),
])
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


# --- generation --------------------------------------------------------------------------------

def test_generation_fixed_answer_exact_accuracy(tokenizer):
    eos = tokenizer.eos_token_id
    ans = ids(tokenizer, " the return value")
    assert len(set(ans)) == len(ans) and ids(tokenizer, ":")[0] not in ans
    model = chain_model(len(tokenizer), ans, eos)
    targets = ["The return  value.", "the return value", "return value", "the value"]
    task = Task("t", "generation", [], [Example(p + ":", t) for p, t in zip(["a", "bb", "c c", "d"], targets)])
    model.train()
    r = evaluate_task(model, tokenizer, task, batch_size=3)
    assert isinstance(r, EvalResult) and r.n == 4
    assert r.accuracy == pytest.approx(0.5)
    assert [normalize_answer(p) for p in r.predictions] == ["the return value"] * 4
    prompt_tokens = sum(len(ids(tokenizer, ex.prompt)) for ex in task.test)
    assert r.tokens == prompt_tokens + 4 * (len(ans) + 1)  # answer + EOS per example
    # eval mode without autograd inside, training mode restored afterwards
    assert all(not training and no_grad for _, training, no_grad in model.calls) and model.training


def test_generation_max_new_tokens_default_and_explicit(tokenizer):
    ans = ids(tokenizer, " one two three four five")
    assert len(set(ans)) == len(ans) > 3
    model = chain_model(len(tokenizer), ans, tokenizer.eos_token_id)
    ex = Example("q:", "one two three four five")
    # default: longest TRAINING target (in tokens) + 2 -> enough for answer + EOS
    assert evaluate_task(model, tokenizer, Task("t", "generation", [ex], [ex])).accuracy == 1.0
    # the test target never sets it: short training targets give a short budget (1 + 2 tokens)
    short = Task("t", "generation", [Example("q:", "the")], [ex])
    model.calls.clear()
    r = evaluate_task(model, tokenizer, short)
    assert r.accuracy == 0.0 and len(model.calls) == 3 and r.predictions == [tokenizer.decode(ans[:3])]
    model.calls.clear()
    r = evaluate_task(model, tokenizer, short, max_new_tokens=1)
    assert r.accuracy == 0.0 and len(model.calls) == 1
    assert r.predictions == [tokenizer.decode(ans[:1])]


def test_generation_template_and_left_truncation(tokenizer):
    model = chain_model(len(tokenizer), ids(tokenizer, " ok"), tokenizer.eos_token_id)
    long_prompt = " ".join(["word"] * 40)
    task = Task("t", "generation", [], [Example(long_prompt, "ok")])
    r = evaluate_task(model, tokenizer, task, template="Q: {prompt} A:", max_length=12, max_new_tokens=4)
    assert r.accuracy == 1.0
    full = ids(tokenizer, f"Q: {long_prompt} A:")
    assert model.calls[0][0][0].tolist() == full[-8:]  # 12 - 4 new tokens, cut from the left
    with pytest.raises(ValueError):
        evaluate_task(model, tokenizer, task, template="{question}")
    model.calls.clear()
    assert evaluate_task(model, tokenizer, Task("t", "generation", [], [Example("", "ok")])).accuracy == 1.0
    assert model.calls[0][0].tolist() == [[tokenizer.bos_token_id]]


def gpt2(tokenizer):
    """Absolute position embeddings: left padding is only right with explicit position ids."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


def naive_greedy(model, prompt, n, stop):
    """The reference: one full forward of the whole sequence per new token, no cache, no padding."""
    seq = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            t = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            seq.append(t)
            if t in stop:
                break
    gen = seq[len(prompt):]
    return (gen[:-1] if gen and gen[-1] in stop else gen), len(seq)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_matches_naive_greedy_loop_and_batching(arch, lm, tokenizer):
    model = (lm if arch == "llama" else gpt2(tokenizer)).eval()
    pad = tokenizer.pad_token_id
    prompts = [ids(tokenizer, p) for p in PROMPTS]
    # stop tokens: two ids the model does emit (so rows stop at different lengths) and EOS
    free = [naive_greedy(model, p, 6, [])[0] for p in prompts]
    stop = [free[0][2], free[3][1], tokenizer.eos_token_id]
    ours, n = greedy_generate(model, prompts, 6, stop, pad, "cpu")
    ref = [naive_greedy(model, p, 6, stop) for p in prompts]
    assert ours == [g for g, _ in ref] and n == sum(k for _, k in ref)
    assert len({len(g) for g in ours}) > 1  # rows did stop at different steps
    singles = [greedy_generate(model, [p], 6, stop, pad, "cpu")[0][0] for p in prompts]
    assert singles == ours


def test_generation_batch_size_does_not_change_results(lm, tokenizer):
    task = Task("t", "generation", [], [Example(p, "whatever it is") for p in PROMPTS])
    a = evaluate_task(lm, tokenizer, task, batch_size=1, max_new_tokens=6)
    b = evaluate_task(lm, tokenizer, task, batch_size=64, max_new_tokens=6)
    assert a.predictions == b.predictions and a.tokens == b.tokens and a.accuracy == b.accuracy
    # targets equal to what the model says are all counted right
    task2 = Task("t", "generation", [], [Example(p, g) for p, g in zip(PROMPTS, a.predictions)])
    assert evaluate_task(lm, tokenizer, task2, max_new_tokens=6).accuracy == 1.0


def test_peft_wrapped_model(lm, tokenizer):
    from peft import LoraConfig, get_peft_model
    import copy

    base = copy.deepcopy(lm)
    peft = get_peft_model(copy.deepcopy(lm), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft.train()
    task = Task("t", "generation", [], [Example(p, "x") for p in PROMPTS[:3]])
    mc = Task("m", "multiple_choice", [], [Example(p, " no", (" no", " maybe so"), 0) for p in PROMPTS[:3]])
    for t in (task, mc):
        assert evaluate_task(peft, tokenizer, t).predictions == evaluate_task(base, tokenizer, t).predictions
    assert peft.training  # LoRA B = 0 at init: same answers as the base model; mode restored


# --- multiple choice ---------------------------------------------------------------------------

def test_multiple_choice_fixed_preference_exact_accuracy(tokenizer):
    V = len(tokenizer)
    colon = ids(tokenizer, ":")[0]
    opts = (" cat", " dog", " no")
    toks = [ids(tokenizer, o) for o in opts]
    rows = {colon: logprob_row(V, {toks[0][0]: 0.1, toks[1][0]: 0.6, toks[2][0]: 0.2})}
    for t in toks:  # later tokens of an option are near certain
        rows.update({a: logprob_row(V, {b: 0.99}) for a, b in zip(t, t[1:])})
    model = BigramLM(V, rows)
    answers = [1, 0, 1, 2, 1]
    task = Task("m", "multiple_choice", [], [Example(f"q{i}:", opts[a], opts, a) for i, a in enumerate(answers)])
    for scoring in ("sum", "mean"):
        r = evaluate_task(model, tokenizer, task, mc_scoring=scoring, batch_size=4)
        assert r.predictions == [1] * 5 and r.accuracy == pytest.approx(3 / 5)
    per_ex = sum(len(ids(tokenizer, f"q{i}:")) + sum(len(ids(tokenizer, o)) for o in opts) for i in range(5))
    assert r.tokens == per_ex  # each prompt is read once, whatever the number of options


def test_sum_and_mean_scoring_differ(tokenizer):
    V = len(tokenizer)
    colon = ids(tokenizer, ":")[0]
    A, B = ids(tokenizer, " no"), ids(tokenizer, " maybe so")
    assert len(A) == 1 and len(B) == 3 and len(set(A + B + [colon])) == 5
    e1, e2 = math.exp(-1), math.exp(-2)
    rows = {colon: logprob_row(V, {A[0]: e2, B[0]: e1}),  # log p(A) = -2, log p(B_0) = -1
            B[0]: logprob_row(V, {B[1]: e1}), B[1]: logprob_row(V, {B[2]: e1})}
    model = BigramLM(V, rows)
    task = Task("m", "multiple_choice", [], [Example("Pick:", " no", (" no", " maybe so"), 0)])
    # sum: A = -2 > B = -3 ; mean: A = -2 < B = -1
    assert evaluate_task(model, tokenizer, task, mc_scoring="sum").predictions == [0]
    assert evaluate_task(model, tokenizer, task, mc_scoring="mean").predictions == [1]
    assert evaluate_task(model, tokenizer, task, mc_scoring="mean").accuracy == 0.0
    p = ids(tokenizer, "Pick:")
    got = score_options(model, [p], [[A, B]], 2, tokenizer.pad_token_id, "cpu")
    assert got[0] == pytest.approx([-2.0, -3.0], abs=1e-5)  # only the option's tokens are scored


def test_multiple_choice_truncation_keeps_option(tokenizer):
    V = len(tokenizer)
    model = BigramLM(V)
    task = Task("m", "multiple_choice", [], [Example(" ".join(["w"] * 30) + ":", " no", (" no", " maybe so"), 0)])
    evaluate_task(model, tokenizer, task, max_length=10)
    prompt, options = model.calls[0][0], model.calls[1][0]
    assert prompt.shape == (1, 7)  # 10 - the longest option, cut from the left
    assert prompt[0].tolist() == ids(tokenizer, task.test[0].prompt)[-7:]
    assert options[1].tolist() == ids(tokenizer, " maybe so")


def test_multiple_choice_batch_size_does_not_change_results(lm, tokenizer):
    opts = (" no", " maybe so", " the return value", " cat")
    task = Task("m", "multiple_choice", [], [Example(p, opts[i % 4], opts, i % 4) for i, p in enumerate(PROMPTS)])
    for scoring in ("sum", "mean"):
        a = evaluate_task(lm, tokenizer, task, batch_size=1, mc_scoring=scoring)
        b = evaluate_task(lm, tokenizer, task, batch_size=64, mc_scoring=scoring)
        assert a.predictions == b.predictions and a.accuracy == b.accuracy and a.tokens == b.tokens


def reference_option_scores(model, prompt, options):
    """The reference: one full forward of prompt + option per option, log-softmax over all logits."""
    out = []
    with torch.inference_mode():
        for o in options:
            x = torch.tensor([prompt + o])
            lp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
            out.append(float(lp[len(prompt) - 1:].gather(-1, x[0, len(prompt):, None]).sum()))
    return out


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_option_scores_match_full_forward_per_option(lm, tokenizer, batch_size):
    """Sharing the prompt's forward (KV cache, logits only where an option token is predicted)
    gives the log-likelihoods of scoring every option on its own, on the tiny model."""
    lm.eval()
    opts = [" no", " maybe so", " the return value of it", " cat", " x"]
    prompts = [ids(tokenizer, p) for p in PROMPTS]
    options = [[ids(tokenizer, o) for o in opts[: 2 + i % 4]] for i in range(len(prompts))]
    got = score_options(lm, prompts, options, batch_size, tokenizer.pad_token_id, "cpu")
    for p, o, g in zip(prompts, options, got):
        assert g == pytest.approx(reference_option_scores(lm, p, o), abs=2e-4)
    task = Task("m", "multiple_choice", [], [Example(p, opts[i % 2], tuple(opts[: 2 + i % 4]), i % 2)
                                             for i, p in enumerate(PROMPTS)])
    ref = [max(range(len(o)), key=lambda j, r=reference_option_scores(lm, p, o), o=o: (r[j] / len(o[j]), -j))
           for p, o in zip(prompts, options)]
    assert evaluate_task(lm, tokenizer, task, batch_size=batch_size).predictions == ref


def test_invalid_inputs(tokenizer):
    model = BigramLM(len(tokenizer))
    with pytest.raises(ValueError, match="no examples"):
        evaluate_task(model, tokenizer, Task("t", "generation", [], []))
    with pytest.raises(ValueError, match="choices"):
        evaluate_task(model, tokenizer, Task("m", "multiple_choice", [], [Example("q", "a")]))
    with pytest.raises(ValueError, match="mc_scoring"):
        evaluate_task(model, tokenizer, Task("t", "generation", [], [Example("q", "a")]), mc_scoring="max")


# --- perplexity --------------------------------------------------------------------------------

class UniformLM(torch.nn.Module):
    def __init__(self, V):
        super().__init__()
        self.V = V

    def forward(self, input_ids, attention_mask=None, **kw):
        return CausalLMOutputWithPast(logits=torch.zeros(*input_ids.shape, self.V))


TEXTS = ["The quick brown fox jumps over the lazy dog.", "Return the value.",
         "A somewhat longer text about functions, modules, classes and the standard library of Python."]


def test_perplexity_of_uniform_model_is_vocab_size(tokenizer):
    V = len(tokenizer)
    ppl, n = general_perplexity(UniformLM(V), tokenizer, TEXTS, max_length=12, batch_size=2)
    assert ppl == pytest.approx(V, rel=1e-5)
    assert n == sum(min(len(ids(tokenizer, t)), 11) + 1 for t in TEXTS)


def test_perplexity_is_token_weighted_and_masks_padding(lm, tokenizer):
    eos = tokenizer.eos_token_id
    nll, count = 0.0, 0
    with torch.no_grad():
        for t in TEXTS:
            x = torch.tensor([ids(tokenizer, t)[:31] + [eos]])
            logits = lm(input_ids=x).logits[0, :-1]
            nll += float(F.cross_entropy(logits, x[0, 1:], reduction="sum"))
            count += x.shape[1] - 1
    lm.train()
    ppl, _ = general_perplexity(lm, tokenizer, TEXTS, max_length=32, batch_size=3)
    assert ppl == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert general_perplexity(lm, tokenizer, TEXTS, max_length=32, batch_size=1)[0] == pytest.approx(ppl, rel=1e-4)
    assert lm.training
