"""The fitted memory model recovers known forgetting; the calibration probe's statistics by hand."""

import numpy as np
import pytest

from forgetless.data.task import Sample
from forgetless.replay.calibration import CalibrationProbe, rank, slice_rows, spearman
from forgetless.replay.memory import ReplayMemory
from forgetless.replay.samplers.strength import FittedStrength, fit_k

from test_schedules import drive, make_ctx  # noqa: E402  (tests/ is on sys.path under pytest)


def test_spearman_hand_values():
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    # ties take the mean rank: [1.5, 1.5, 3] vs [1, 2, 3] -> 1.5 / sqrt(1.5 * 2)
    np.testing.assert_array_equal(rank([5, 5, 7]), [1.5, 1.5, 3])
    assert spearman([5, 5, 7], [1, 2, 3]) == pytest.approx(1.5 / np.sqrt(3.0))
    assert spearman([0, 0, 0], [1, 2, 3]) is None  # the constant predictor ranks nothing


def test_fit_k_is_least_squares_through_the_origin():
    dt = np.array([1.0, 2.0, 4.0])
    z = np.array([0.5, 1.1, 1.9])
    k = fit_k((dt * z).sum(), (dt * dt).sum(), 3.0, 0.5)
    # argmin_k sum (z - k dt)^2 + 0.5 (k - 3)^2  =>  k = (sum dt z + 0.5 * 3) / (sum dt^2 + 0.5)
    assert k == pytest.approx((0.5 + 2.2 + 7.6 + 1.5) / (21.0 + 0.5))
    assert fit_k(-5.0, 1.0, 0.0, 1.0) == 0.0  # loss fell: no negative decay


def _samples(task, n):
    return [Sample(task * 1000 + i, task, np.arange(4, dtype=np.int64), np.arange(4, dtype=np.int64)) for i in range(n)]


def test_estimator_recovers_known_forgetting():
    """Two tasks whose rows forget at known rates: loss = stored * exp(k_true * steps since trained).
    The fitted task k equals k_true (noise-free, up to the prior's weight), each reviewed row's k too,
    and the predicted forgottenness ranks the rows like their true forgetting, which recency alone
    cannot (the tasks forget at different rates)."""
    k_true = {0: 0.02, 1: 0.07}  # per step
    mem = ReplayMemory(40, "per_task", seed=0)
    fs = FittedStrength(mem, k0=1.0, prior=1.0, shrink=1.0, clock="steps")
    rng = np.random.default_rng(0)
    stored, last, step = {}, {}, 0
    for t in (0, 1):
        fs.start_task(t)
        for s in _samples(t, 20):  # one training step per row: its loss when stored
            stored[s.sample_id] = float(rng.uniform(0.5, 2.0))
            last[s.sample_id] = step
            fs.observe(np.array([s.sample_id]), np.array([stored[s.sample_id]]), np.array([-1]), np.array([True]), step)
            step += 1
        fs.admit(mem.admit(_samples(t, 20)), step)
    fs.start_task(2)
    ids = mem.column("sample_id")[: len(mem)]

    def true_loss(i, at):
        return stored[i] * np.exp(k_true[i // 1000] * (at - last[i]))

    for _ in range(60):  # each step reviews 3 random rows at their true loss
        pick = rng.choice(len(mem), 3, replace=False)
        fs.observe(np.append(ids[pick], 9999), np.array([true_loss(int(i), step) for i in ids[pick]] + [1.0]),
                   np.append(pick, -1), np.array([False, False, False, True]), step)
        for i in ids[pick]:
            last[int(i)] = step
        step += 1
    for t in (0, 1):
        assert fit_k(fs.task_sxy[t], fs.task_sxx[t], 0.0, 0.0) == pytest.approx(k_true[t], rel=1e-9)
    k = fs.k()
    reviewed = mem.column("sxx")[: len(mem)] > 0
    assert reviewed.sum() > 30
    np.testing.assert_allclose(k[reviewed], [k_true[int(i) // 1000] for i in ids[reviewed]], rtol=0.02)
    # the model's forgottenness 1 - m = 1 - exp(-k dtau) is monotone in -log retention = log(loss / stored)
    ratio = np.log([true_loss(int(i), step) / stored[int(i)] for i in ids])
    recency = np.array([step - last[int(i)] for i in ids], dtype=float)
    assert spearman(1 - fs.strength(), ratio) > 0.99
    assert spearman(recency, ratio) < 0.9


def test_probe_statistics_hand_computed():
    """Task 0 stored at loss 1 (measured at its end, step 60); memory row j is then replayed at step
    61 + j at loss 1, so at step 100 its recency is 39 - j. The probe measures losses with a known
    increase; the rows share one k, so m = exp(-k dtau) ranks them like recency."""
    ctx = make_ctx({"strategy": "mssr", "budget": 0.25, "memory": {"size": 16},
                    "mssr": {"calibration": {"every": 1, "rows": 10}}})
    increase = {}

    def losses(samples):
        ctx.counters.extra_forward_tokens += sum(s.n_tokens for s in samples)
        return np.array([1.0 + increase.get(s.sample_id, 0.0) for s in samples])

    ctx.sample_losses = losses
    s = __import__("forgetless.replay", fromlist=["REGISTRY"]).REGISTRY["mssr"](ctx)
    drive(s, tasks=[0])  # 60 steps, then task 0 is admitted and its rows measured at loss 1
    ids = s.memory.column("sample_id")[: len(s.memory)]
    assert (s.strength.col("loss_stored")[: len(ids)] == 1.0).all()
    s.on_task_start(ctx.stream.tasks[1], 1, 61)
    for j, i in enumerate(ids):
        s.observe(np.array([1000, i]), np.array([1.0, 1.0]), 61 + j)
    rows = slice_rows(ids, 10, 0)
    assert len(rows) == 10 and (rows == slice_rows(ids, 10, 0)).all()
    recency = 100.0 - (61 + rows)
    extra = ctx.counters.extra_forward_tokens
    for sign in (1.0, -1.0):
        for j, i in enumerate(ids):
            increase[int(i)] = sign * 0.01 * (39 - j)
        before = ctx.counters.eval_tokens
        rec = s.calibrate(100)
        assert rec["rows"] == 10 and rec["spearman"]["constant"] is None
        assert rec["spearman"]["recency"] == pytest.approx(sign * 1.0)
        assert rec["spearman"]["model"] == pytest.approx(sign * 1.0)
        assert rec["mean_increase"] == pytest.approx(sign * 0.01 * recency.mean())
        assert ctx.counters.eval_tokens - before == sum(x.n_tokens for x in s.memory.get(rows))
    assert ctx.counters.extra_forward_tokens == extra  # the probe is counted as evaluation
    rep = s.report()["calibration"]
    assert rep["probes"] == 2 and rep["spearman_mean"]["recency"] == pytest.approx(0.0)
    assert sum(rep["bins"]["n"]) == 20
    assert s.calibrate(101) is not None and CalibrationProbe.every(s.calibration) == 1


def test_flat_mssr_keys_refused_with_their_new_place():
    from forgetless.config import InputError, from_dict

    with pytest.raises(InputError, match=r"replay\.mssr.*'k0' moved: write replay\.mssr\.retention\.k0"):
        from_dict({"replay": {"mssr": {"k0": 0.05}}})
    cfg = from_dict({"replay": {"mssr": {"retention": {"k0": 0.05}, "volume": {"ratio0": 2.0}}}})
    assert cfg.replay.mssr.retention.k0 == 0.05 and cfg.replay.mssr.volume.ratio0 == 2.0


def test_sampler_score_predicted_increase_and_standardized_weights():
    """Two rows stored at loss 1 and 3, same k and elapsed time: retention equal, but the predicted
    loss increase stored * (e^{k dtau} - 1) is 3x larger for the second; standardized weights with
    T = 1 and no floor are softmax(f / sd(f)) = e^{±1} / (e^{-1} + e^{1}) for two distinct values."""
    mem = ReplayMemory(4, "per_task", seed=0)
    fs = FittedStrength(mem, k0=0.5, clock="steps", score="increase", floor=0.0, standardize=True)
    fs.admit(mem.admit(_samples(0, 2)), 0, losses=np.array([1.0, 3.0]))
    fs.advance(2.0)
    m = fs.strength()
    assert m == pytest.approx([np.exp(-1.0)] * 2)
    f = np.array([1.0, 3.0]) * np.expm1(1.0)
    np.testing.assert_allclose(fs.score(), f - f.max())
    np.testing.assert_allclose(fs.weights(), np.exp([-1.0, 1.0]) / (np.exp(-1.0) + np.exp(1.0)))
    fs.score_kind = "forgottenness"
    np.testing.assert_allclose(fs.weights(), [0.5, 0.5])  # equal retention: no preference
