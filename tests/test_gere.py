"""GeRe: losses against hand-computed values, statistics, mixing, storage, end to end."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from forgetless.config import Config
from forgetless.data.task import Sample
from forgetless.errors import InputError
from forgetless.replay.base import REGISTRY, StrategyContext, WorkCounters
from forgetless.replay.gere import (
    GeRe,
    ReferenceStore,
    RunningStats,
    aux_weight,
    build_general_samples,
    general_row,
    kl_loss,
    l1_loss,
    l2_loss,
    margin_thresholds,
    read_texts,
    reference_topk,
    tm_loss,
)
from forgetless.train import collate

TP = torch.tensor([1.0])
TN = torch.tensor([-1.0])


def _tm(h, ref, mask=None):
    h = torch.tensor(h, dtype=torch.float32).reshape(1, -1, 1)
    ref = torch.tensor(ref, dtype=torch.float32).reshape(1, -1, 1)
    m = None if mask is None else torch.tensor(mask).reshape(1, -1)
    return float(tm_loss(h, ref, TP, TN, m))


# ---- TM loss ---------------------------------------------------------------------------------

def test_tm_positive_state():
    # ref 2 > tau+ = 1: loss max(0, 1 - h)
    assert _tm([0.25], [2.0]) == pytest.approx(0.75)
    assert _tm([1.5], [2.0]) == 0.0
    assert _tm([-3.0], [2.0]) == pytest.approx(4.0)


def test_tm_negative_state():
    # ref -2 < tau- = -1: loss max(0, h + 1)
    assert _tm([-0.5], [-2.0]) == pytest.approx(0.5)
    assert _tm([-1.5], [-2.0]) == 0.0
    assert _tm([2.0], [-2.0]) == pytest.approx(3.0)


def test_tm_neutral_state():
    # ref 0 in the band: loss max(0, h - 1) + max(0, -1 - h)
    assert _tm([0.9], [0.0]) == 0.0
    assert _tm([1.5], [0.0]) == pytest.approx(0.5)
    assert _tm([-1.75], [0.0]) == pytest.approx(0.75)
    # boundaries belong to the band: ref exactly tau+ is neutral
    assert _tm([1.5], [1.0]) == pytest.approx(0.5)
    assert _tm([0.5], [1.0]) == 0.0


def test_tm_divides_by_number_of_violations():
    # three violations 0.75 + 0.5 + 0.75 = 2.0, two satisfied elements do not count
    ref = [2.0, -2.0, 0.0, 2.0, 0.0]
    h = [0.25, -0.5, -1.75, 3.0, 0.0]
    assert _tm(h, ref) == pytest.approx(2.0 / 3)


def test_tm_masking():
    ref = [2.0, -2.0, 0.0, 2.0]
    h = [0.25, -0.5, -1.75, -100.0]
    assert _tm(h, ref, mask=[1, 1, 1, 0]) == pytest.approx(2.0 / 3)
    assert _tm(h, ref, mask=[0, 0, 0, 0]) == 0.0


def test_tm_per_dimension_thresholds():
    tp, tn = torch.tensor([1.0, 10.0]), torch.tensor([-1.0, 5.0])
    ref = torch.tensor([[[2.0, 7.0]]])  # dim 0 positive, dim 1 neutral
    h = torch.tensor([[[0.0, 11.0]]])  # violations 1.0 and 1.0
    assert float(tm_loss(h, ref, tp, tn)) == pytest.approx(1.0)


def test_tm_zero_at_identity():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 7, 5, generator=g)
    tp, tn = margin_thresholds(h, torch.ones(3, 7))
    assert float(tm_loss(h, h.clone(), tp, tn)) == 0.0


def test_tm_gradient_pushes_back_into_band():
    ref = torch.tensor([[[2.0, -2.0, 0.0]]])
    h = torch.tensor([[[0.0, 0.0, 3.0]]], requires_grad=True)
    tp, tn = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([-1.0, -1.0, -1.0])
    loss = tm_loss(h, ref, tp, tn)
    loss.backward()
    with torch.no_grad():
        h2 = h - 0.5 * h.grad
    # positive below tau+ is pushed up; negative above tau- and neutral above tau+ are pushed down
    assert h.grad[0, 0, 0] < 0 and h.grad[0, 0, 1] > 0 and h.grad[0, 0, 2] > 0
    assert float(tm_loss(h2, ref, tp, tn)) < float(loss.detach())


# ---- thresholds and running statistics -------------------------------------------------------

def test_margin_thresholds_match_numpy():
    rng = np.random.default_rng(1)
    h = rng.normal(3.0, 2.0, size=(4, 9, 6)).astype(np.float32)
    mask = rng.random((4, 9)) > 0.3
    tp, tn = margin_thresholds(torch.from_numpy(h), torch.from_numpy(mask), k=1.5)
    real = h[mask].astype(np.float64)
    np.testing.assert_allclose(tp.numpy(), real.mean(0) + 1.5 * real.std(0), rtol=1e-5)
    np.testing.assert_allclose(tn.numpy(), real.mean(0) - 1.5 * real.std(0), rtol=1e-5)


@pytest.mark.parametrize("loc,scale", [(0.0, 1.0), (1e4, 1.0), (1e6, 1e-3)])
def test_running_stats_equal_numpy(loc, scale):
    rng = np.random.default_rng(2)
    x = rng.normal(loc, scale, size=(1000, 4))
    parts = np.split(x, [1, 7, 300, 301, 650])
    a, b = RunningStats(4), RunningStats(4)
    for p in parts[:3]:
        a.update(p)
    for p in parts[3:]:
        b.update(p)
    a.merge(b)
    assert a.count == 1000
    np.testing.assert_allclose(a.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(a.var, x.var(0), rtol=1e-6)
    tp, tn = a.thresholds(2.0)
    np.testing.assert_allclose(tp - tn, 4 * x.std(0), rtol=1e-6)


# ---- other losses and the weight --------------------------------------------------------------

def test_l1_l2_hand_values_and_identity():
    h = torch.tensor([[[1.0, 2.0], [0.0, 0.0]]])
    ref = torch.tensor([[[0.0, 0.0], [5.0, 5.0]]])
    mask = torch.tensor([[1, 0]])
    assert float(l1_loss(h, ref, mask)) == pytest.approx(1.5)
    assert float(l2_loss(h, ref, mask)) == pytest.approx(2.5)
    assert float(l1_loss(h, h)) == 0.0 and float(l2_loss(h, h)) == 0.0


def test_kl_zero_at_identity_positive_otherwise():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 40, generator=g)
    idx, val = reference_topk(logits, 8)
    assert float(kl_loss(logits, idx, val, 2.0)) == pytest.approx(0.0, abs=1e-6)
    other = logits + torch.randn(2, 5, 40, generator=g)
    assert float(kl_loss(other, idx, val, 2.0)) > 1e-3


def test_kl_hand_value():
    # two-token support, reference logits (0, 0) -> p = (.5, .5); model logits (2, 0) at T = 2 -> q = softmax(1, 0)
    idx = torch.tensor([[[3, 1]]])
    val = torch.tensor([[[0.0, 0.0]]])
    logits = torch.zeros(1, 1, 5)
    logits[0, 0, 3] = 2.0
    q = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    expected = 4 * float(0.5 * torch.log(0.5 / q[0]) + 0.5 * torch.log(0.5 / q[1]))
    assert float(kl_loss(logits, idx, val, 2.0)) == pytest.approx(expected, rel=1e-5)


def test_dynamic_weight_has_no_gradient():
    x = torch.tensor(2.0, requires_grad=True)
    aux = x * x  # 4
    ce = torch.tensor(3.0)
    w = aux_weight("dynamic", ce, aux)
    assert float(w) == pytest.approx(0.75) and not w.requires_grad
    (w * aux).backward()
    assert float(x.grad) == pytest.approx(0.75 * 2 * 2.0)  # w treated as a constant
    zero = aux_weight("dynamic", ce, torch.tensor(0.0))
    assert float(zero) == 0.0 and torch.isfinite(zero)
    assert float(aux_weight("100", None, aux)) == 100.0 and float(aux_weight("1", None, aux)) == 1.0


# ---- general samples -----------------------------------------------------------------------------

class CharTok:
    """A character tokenizer (id = byte + 2, eos = 1) with the call shape GeRe uses."""

    eos_token_id = 1
    bos_token_id = None

    def __call__(self, texts, add_special_tokens=False, verbose=True):
        if isinstance(texts, str):
            return {"input_ids": [b + 2 for b in texts.encode()]}
        return {"input_ids": [[b + 2 for b in t.encode()] for t in texts]}


DOCS = [f"document number {i} " * (3 + i % 4) for i in range(30)]


def test_general_samples_shape_ids_determinism():
    s = build_general_samples(DOCS, CharTok(), n_samples=10, seq_len=32, seed=5)
    assert len(s) == 10
    assert all(x.n_tokens == 32 and np.array_equal(x.labels, x.input_ids) for x in s)
    assert [x.sample_id for x in s] == [-(i + 1) for i in range(10)] and {x.task_id for x in s} == {-1}
    assert 1 in np.concatenate([x.input_ids for x in s])  # EOS between documents
    again = build_general_samples(DOCS, CharTok(), n_samples=10, seq_len=32, seed=5)
    assert all(np.array_equal(a.input_ids, b.input_ids) for a, b in zip(s, again))
    other = build_general_samples(DOCS, CharTok(), n_samples=10, seq_len=32, seed=6)
    assert not all(np.array_equal(a.input_ids, b.input_ids) for a, b in zip(s, other))
    np.testing.assert_array_equal(general_row([x.sample_id for x in s]), np.arange(10))


def test_general_samples_too_few_tokens_warns():
    total = sum(len(d) + 1 for d in DOCS)
    with pytest.warns(UserWarning, match="instead of 10000"):
        s = build_general_samples(DOCS, CharTok(), n_samples=10000, seq_len=32)
    assert len(s) == total // 32
    with pytest.raises(InputError):
        build_general_samples(["ab"], CharTok(), n_samples=1, seq_len=32)


def test_read_texts_jsonl_and_plain(tmp_path):
    good = tmp_path / "g.jsonl"
    good.write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two", "x": 1}) + "\n")
    assert read_texts(good) == ["one", "two"]
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps({"text": "one"}) + "\n{oops\n")
    with pytest.raises(InputError, match=r"b\.jsonl:2"):
        read_texts(bad)
    missing = tmp_path / "m.jsonl"
    missing.write_text(json.dumps({"body": "one"}) + "\n")
    with pytest.raises(InputError, match=r"m\.jsonl:1, field 'text'"):
        read_texts(missing)
    plain = tmp_path / "p.txt"
    plain.write_text("first doc\nstill first\n\n\nsecond doc\n")
    assert read_texts(plain) == ["first doc\nstill first", "second doc"]


# ---- mixing and state --------------------------------------------------------------------------

def _strategy(tmp_path, **gere) -> GeRe:
    cfg = Config.model_validate({"replay": {"strategy": "gere", "gere": gere}})
    ctx = StrategyContext(config=cfg, stream=None, seed=0, counters=WorkCounters(), run_dir=tmp_path / "run")
    return GeRe(ctx)


def _with_samples(st: GeRe, n: int) -> GeRe:
    st.samples = [Sample(-(i + 1), -1, np.arange(8), np.arange(8)) for i in range(n)]
    return st


def test_registered():
    assert REGISTRY["gere"] is GeRe and GeRe.needs_hidden_states


def test_interpolate_exact_per_batch_across_permutations(tmp_path):
    st = _with_samples(_strategy(tmp_path, mixing="interpolate", per_batch=2), 5)
    groups = [[s.sample_id for s in st.replay_batch(step, 16).samples] for step in range(1, 11)]
    assert all(len(g) == 2 and len(set(g)) == 2 for g in groups)  # incl. the 1 + 1 boundary group
    flat = np.concatenate(groups)
    assert sorted(flat[:5]) == [-5, -4, -3, -2, -1]  # the first permutation is used up first
    assert np.bincount(general_row(flat)).tolist() == [4] * 5


def test_interpolate_more_per_batch_than_samples(tmp_path):
    st = _with_samples(_strategy(tmp_path, mixing="interpolate", per_batch=3), 2)
    assert all(len(st.replay_batch(s, 4)) == 3 for s in range(5))


def test_shuffle_mean_ratio(tmp_path):
    st = _with_samples(_strategy(tmp_path, mixing="shuffle", ratio=0.125), 50)
    counts = np.array([len(b) if (b := st.replay_batch(s, 16)) else 0 for s in range(3000)])
    assert abs(counts.mean() - 2.0) < 0.1 and (counts == 0).any() and counts.max() > 2
    st = _with_samples(_strategy(tmp_path, mixing="shuffle", ratio=1.5), 50)
    counts = np.array([len(st.replay_batch(s, 4)) for s in range(2000)])
    assert abs(counts.mean() - 6.0) < 0.1 and counts.min() >= 4


def test_state_dict_resumes_the_same_sequence(tmp_path):
    a = _with_samples(_strategy(tmp_path, mixing="shuffle", ratio=0.5), 7)
    for s in range(5):
        a.replay_batch(s, 8)
    state = json.loads(json.dumps(a.state_dict(), default=lambda o: o.tolist()))
    b = _with_samples(_strategy(tmp_path, mixing="shuffle", ratio=0.5), 7)
    b.load_state_dict(state)
    for s in range(10):
        ra, rb = a.replay_batch(s, 8), b.replay_batch(s, 8)
        assert (ra is None and rb is None) or [x.sample_id for x in ra.samples] == [x.sample_id for x in rb.samples]


# ---- storage ---------------------------------------------------------------------------------------

def test_memmap_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    data = rng.normal(size=(6, 5, 3)).astype(np.float16)
    stats = RunningStats(3)
    stats.update(data.reshape(-1, 3))

    def fill(maps):
        maps["hidden"][:] = data
        return stats, 3

    store = ReferenceStore.write(tmp_path / "entry", {"hidden": ((6, 5, 3), np.float16)}, fill)
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]  # temp dir renamed, nothing left over
    again = ReferenceStore(tmp_path / "entry")
    idx = np.array([4, 0, 4, 2])
    np.testing.assert_array_equal(again.rows("hidden", idx), data[idx])
    np.testing.assert_allclose(again.stats.mean, stats.mean)
    assert again.stats.count == 30


# ---- end to end with a tiny Llama + LoRA ---------------------------------------------------------

def _tiny_model(vocab: int):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    base = LlamaForCausalLM(cfg)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))


def _e2e(tmp_path, loss, weight="1"):
    model = _tiny_model(300)
    cfg = Config.model_validate({"model": {"name": "test-tiny"}, "replay": {"strategy": "gere", "gere": {
        "loss": loss, "weight": weight, "n_samples": 6, "seq_len": 16, "source": str(tmp_path / "g.jsonl"),
        "kl_top_k": 5, "ref_batch_size": 4, "per_batch": 3}}})
    (tmp_path / "g.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    counters = WorkCounters()
    ctx = StrategyContext(config=cfg, stream=None, seed=0, counters=counters, model=model,
                          tokenizer=CharTok(), run_dir=tmp_path / "runs" / "r1")
    return GeRe(ctx), model, counters


def _merged_batch(st: GeRe):
    task = [Sample(i, 0, np.arange(2, 22), np.r_[[-100] * 10, np.arange(12, 22)]) for i in range(2)]
    short = Sample(2, 0, np.arange(2, 7), np.arange(2, 7))
    merged = [task[0], *st.replay_batch(1, 4).samples, short, task[1]]
    return collate(merged, 0)  # longer than the general samples: right padding on them


@pytest.mark.parametrize("loss", ["tm", "l1", "l2", "kl"])
def test_end_to_end_zero_on_untrained_model(tmp_path, loss):
    st, model, counters = _e2e(tmp_path, loss)
    st.on_task_start(None, 0, 0)
    assert counters.reference_tokens == 6 * 16 and counters.extra_forward_tokens == 0
    batch = _merged_batch(st)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    aux = st.extra_loss(batch, out)
    assert float(aux) < 1e-3  # float16 storage rounding only
    # perturb the adapters: the model moves away from the reference, the loss sees it and has a gradient
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    aux2 = st.extra_loss(batch, out)
    assert float(aux2) > 100 * max(float(aux), 1e-6)
    aux2.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_references_use_the_base_model_and_the_cache(tmp_path):
    st, model, counters = _e2e(tmp_path, "tm")
    with torch.no_grad():  # adapters already trained: references must still be the base model's
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    st.on_task_start(None, 0, 0)
    ids = torch.from_numpy(np.stack([s.input_ids for s in st.samples]))
    with model.disable_adapter(), torch.no_grad():
        base = model(input_ids=ids, output_hidden_states=True)
        base_h = base.hidden_states[-1]
    stored = st.store.rows("hidden", np.arange(6)).astype(np.float32)
    np.testing.assert_allclose(stored, base_h.numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(st.store.stats.mean, base_h.reshape(-1, 32).double().mean(0).numpy(), atol=1e-5)
    # hidden_states[-1] is the LM-head input (after the final norm) in this transformers version
    assert torch.allclose(model.get_output_embeddings()(base_h), base.logits, atol=1e-5)
    # a second strategy (a second run) reuses the cache entry and is charged the same reference cost
    st2, _, counters2 = _e2e(tmp_path, "tm")
    st2.ctx.model = model
    st2.on_task_start(None, 0, 0)
    assert st2.cache_key == st.cache_key and counters2.reference_tokens == counters.reference_tokens == 6 * 16
    assert counters2.time_reference_s == counters.time_reference_s > 0
    assert st.cache_dir() == tmp_path / "runs" / ".cache" / "gere"


def test_dynamic_weight_end_to_end(tmp_path):
    st, model, _ = _e2e(tmp_path, "tm", weight="dynamic")
    st.on_task_start(None, 0, 0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    batch = _merged_batch(st)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    total = st.extra_loss(batch, out)
    rows = batch["sample_ids"] < 0
    logits, labels = out.logits[rows][:, :16], batch["labels"][rows][:, :16]
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 300), labels[:, 1:].reshape(-1))
    assert float(total) == pytest.approx(float(ce), rel=1e-4)  # w * aux == CE by construction


def test_no_general_rows_and_ce_loss(tmp_path):
    st, model, _ = _e2e(tmp_path, "tm")
    batch = collate([Sample(0, 0, np.arange(2, 10), np.arange(2, 10))], 0)
    assert st.extra_loss(batch, None) is None
    st_ce, _, counters = _e2e(tmp_path, "ce")
    st_ce.on_task_start(None, 0, 0)
    assert counters.extra_forward_tokens == counters.reference_tokens == 0 and st_ce.store is None


def test_bundled_general_corpus_builds_samples():
    pytest.importorskip("tokenizers")
    from forgetless.data.general import general_texts
    from forgetless.model import load_tokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = build_general_samples(general_texts("train"), load_tokenizer("tiny"), n_samples=20, seq_len=64)
    assert len(s) == 20 and all(x.n_tokens == 64 for x in s)


def test_align_right_and_left_padding():
    from forgetless.replay.gere.strategy import _align

    t = torch.arange(2 * 6 * 3).reshape(2, 6, 3)
    rows = torch.tensor([1, 0])
    np.testing.assert_array_equal(_align(t, rows, torch.tensor([0, 0]), 4), t[[1, 0], :4])
    got = _align(t, rows, torch.tensor([2, 1]), 4)
    np.testing.assert_array_equal(got, torch.stack([t[1, 2:6], t[0, 1:5]]))
    am = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(_align(am, torch.tensor([0, 1]), torch.tensor([2, 0]), 4), torch.ones(2, 4))


@pytest.mark.parametrize("loss", ["l2", "kl", "tm"])
def test_aux_gradient_same_on_two_processes_as_on_one(tmp_path, loss):
    """The loop's loss (train.step_loss) on one process vs its per-rank slices with DDP's gradient mean: the
    same gradient, GeRe's term included, when the ranks hold unequal numbers of general samples (2 and 1).
    TM normalises by the step's violating-element count: the ranks' counts are summed as the context's
    reduce_sum (an all-reduce in a real run) would, from a first pass that records each rank's count."""
    from forgetless.train import micro_batches, step_loss

    st, model, _ = _e2e(tmp_path, loss)
    st.on_task_start(None, 0, 0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    task = [Sample(i, 0, np.arange(2, 22), np.r_[[-100] * 10, np.arange(12, 22)]) for i in range(3)]
    merged = [task[0], *st.replay_batch(1, 4).samples, task[1], task[2]]  # general at 1, 2, 3: ranks 1, 0, 1
    total = sum(int((s.labels[1:] != -100).sum()) for s in merged)
    n_general = sum(s.sample_id < 0 for s in merged)
    params = [p for p in model.parameters() if p.requires_grad]

    kind = loss

    def grads(world):
        out = [torch.zeros_like(p) for p in params]
        st.ctx.reduce_sum = None
        if world > 1 and kind == "tm":
            counts = []
            st.ctx.reduce_sum = lambda t: (counts.append(int(t)), t)[1]
            for rank in range(world):
                step_loss(model, collate(merged[rank::world], 0), st, True, world, total, n_general)
            assert len(counts) == world and all(counts)  # every rank took part, each with violations
            st.ctx.reduce_sum = lambda t: torch.tensor(sum(counts))
        for rank in range(world):
            for chunk, _ in micro_batches(merged[rank::world], 1):
                loss, *_ = step_loss(model, collate(chunk, 0), st, True, world, total, n_general)
                for acc, g in zip(out, torch.autograd.grad(loss, params, allow_unused=True)):
                    if g is not None:
                        acc += g / world  # DDP averages the ranks' gradients
        return out

    one, two = grads(1), grads(2)
    assert sum(float(g.abs().sum()) for g in one) > 0
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
