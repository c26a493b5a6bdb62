"""The loop's building blocks: collation, per-sample losses, batch drawing, one real step."""

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from forgetless.config import TrainConfig
from forgetless.data.task import Sample
from forgetless.replay.base import BaseStrategy, ReplayBatch, WorkCounters
from forgetless.losses import token_losses
from forgetless.train import BatchSampler, Optimization, TaskLoop, collate, steps_for_task


def _sample(i, n_prompt, n_target, task=0):
    ids = np.arange(1, n_prompt + n_target + 1, dtype=np.int64) % 50 + 1
    labels = ids.copy()
    labels[:n_prompt] = -100
    return Sample(sample_id=i, task_id=task, input_ids=ids, labels=labels)


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def test_collate_pads_right_and_masks_labels():
    b = collate([_sample(0, 2, 2), _sample(1, 3, 3)], pad_id=0)
    assert b["input_ids"].shape == (2, 6)
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    assert b["labels"][0].tolist() == [-100, -100, 4, 5, -100, -100]
    assert b["sample_ids"].tolist() == [0, 1]


def test_token_losses_match_hf_loss_and_per_sample_mean():
    model = _model()
    batch = collate([_sample(0, 2, 3), _sample(1, 4, 2)], pad_id=0)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    tl, mask = token_losses(out.logits, batch["labels"])
    assert torch.allclose((tl * mask).sum() / mask.sum(), out.loss, atol=1e-6)
    # each sample's mean equals the loss of that sample run alone
    for i, s in enumerate([_sample(0, 2, 3), _sample(1, 4, 2)]):
        b1 = collate([s], pad_id=0)
        alone = model(input_ids=b1["input_ids"], labels=b1["labels"]).loss
        per = (tl[i] * mask[i]).sum() / mask[i].sum()
        assert torch.allclose(per, alone, atol=1e-5)


def test_batch_sampler_full_batches_cover_each_epoch():
    s = BatchSampler(10, 4, np.random.default_rng(0))
    drawn = np.concatenate([s.next() for _ in range(5)])  # 20 = two epochs
    assert all(len(x) == 4 for x in [s.next()])
    assert sorted(drawn[:10]) == list(range(10)) and sorted(drawn[10:20]) == list(range(10))


def test_steps_for_task_epochs_and_fixed():
    assert steps_for_task(TrainConfig(batch_size=16, epochs=1.0), 100) == 7
    assert steps_for_task(TrainConfig(batch_size=16, epochs=2.0), 100) == 13
    assert steps_for_task(TrainConfig(steps_per_task=5), 100) == 5


class _Recorder(BaseStrategy):
    name = "rec"

    def __init__(self, replay):
        super().__init__(None)
        self.replay, self.seen = replay, []

    def replay_batch(self, step, batch_size):
        return ReplayBatch(self.replay)

    def observe(self, ids, losses, step):
        self.seen.append((ids.copy(), losses.copy()))


def _loop(model, strategy, accum=1):
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    m = acc.prepare(model)
    cfg = TrainConfig(batch_size=4, lr=1e-2, grad_accum=accum)
    return TaskLoop(m, acc, Optimization(m, acc, cfg), strategy, WorkCounters(), cfg,
                    pad_id=0, rng=np.random.default_rng(0))


def test_loop_merges_replay_observes_every_sample_and_counts():
    task = [_sample(i, 3, 2) for i in range(8)]
    replay = [_sample(100 + i, 2, 4, task=1) for i in range(2)]
    strat = _Recorder(replay)
    loop = _loop(_model(), strat)
    before = [p.detach().clone() for p in loop.model.parameters()]
    step = loop.run(0, task, steps=3, global_step=0)
    assert step == 3
    assert loop.counters.optimizer_steps == 3
    assert loop.counters.replay_samples == 6
    assert loop.counters.replay_tokens == 6 * 6
    assert loop.counters.new_task_tokens == 3 * 4 * 5
    assert [e["n_samples"] for e in loop.replay_events] == [2, 2, 2]
    for ids, losses in strat.seen:
        assert len(ids) == 6 and {100, 101} <= set(ids.tolist())
        assert np.all(np.isfinite(losses)) and np.all(losses > 0)
    assert any(not torch.equal(a, b) for a, b in zip(before, loop.model.parameters()))


def test_grad_accumulation_gives_the_same_update():
    task = [_sample(i, 3, 1 + i % 3) for i in range(8)]
    results = []
    for accum in (1, 2):
        loop = _loop(_model(), _Recorder([]), accum=accum)
        loop.run(0, task, steps=2, global_step=0)
        results.append([p.detach().clone() for p in loop.model.parameters()])
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-5)


def test_full_finetuning_keeps_fp32_master_weights():
    """Full fine-tuning loads fp32 weights under dtype auto (bf16 on a GPU otherwise) and trains them under
    bf16 autocast: an AdamW step smaller than bf16's resolution still moves them (pure bf16 would not)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from forgetless.model import resolve_dtype

    assert resolve_dtype("auto", torch.device("cuda"), full_finetune=True) == torch.float32
    AcceleratorState._reset_state()
    acc = Accelerator(cpu=True, mixed_precision="bf16")
    m = acc.prepare(_model())
    cfg = TrainConfig(batch_size=4, lr=1e-6, max_grad_norm=None)
    loop = TaskLoop(m, acc, Optimization(m, acc, cfg), _Recorder([]), WorkCounters(), cfg, pad_id=0,
                    rng=np.random.default_rng(0))
    w = m.model.layers[0].mlp.up_proj.weight
    before = w.detach().clone()
    loop.run(0, [_sample(i, 3, 2) for i in range(8)], steps=1, global_step=0)
    AcceleratorState._reset_state()
    assert w.dtype == torch.float32
    moved = w.detach() != before
    assert moved.float().mean() > 0.5
    delta = (w.detach() - before)[moved]
    # the same update applied to bf16 weights: rounds away for nearly all of them
    as_bf16 = before.bfloat16()[moved]
    assert ((as_bf16.float() + delta).bfloat16() == as_bf16).float().mean() > 0.9


def test_gradient_checkpointing_same_gradient_and_attn_option():
    from forgetless.config import LoraConfig, ModelConfig
    from forgetless.model import load_model
    from forgetless.train import step_loss

    batch = collate([_sample(0, 2, 3), _sample(1, 4, 2)], pad_id=0)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)  # the same LoRA initialisation
        model, _ = load_model(ModelConfig(lora=LoraConfig(r=4), gradient_checkpointing=ckpt,
                                          attn_implementation="eager"), device="cpu")
        assert model.base_model.model.is_gradient_checkpointing == ckpt
        assert model.config._attn_implementation == "eager"
        model.train()
        loss, *_ = step_loss(model, batch, BaseStrategy(None), False, 1, 5, 0)
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
