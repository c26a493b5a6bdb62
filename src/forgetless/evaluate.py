"""Task accuracy of a (possibly PEFT-wrapped) Hugging Face causal LM, and general perplexity.

Prompts and answers are tokenized the way training tokenizes them: the (templated) prompt and the
answer separately, without special tokens, then concatenated; a prompt too long for ``max_length``
loses tokens from the left. Generation is batched greedy decoding with a small hand-written
KV-cache loop (left padding, explicit position ids, logits of the last position only). On the tiny
model on CPU it is as fast as ``model.generate(do_sample=False)`` (within noise, same tokens) and
it also runs any module that returns ``logits`` and ``past_key_values``, which keeps tests simple.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace
from typing import Any, Literal, Sequence

import torch

from forgetless.data.task import Example, Task
from forgetless.data.tokenize import render_prompt, render_target
from forgetless.losses import token_losses
from forgetless.scoring import metric_for, normalize_answer, score_texts  # noqa: F401 (re-exported)

@dataclass
class EvalResult:
    score: float  # mean of the per-example scores of ``metric`` (accuracy for multiple choice)
    n: int
    tokens: int  # tokens the model processed: prompt + generated, or prompt + option per option
    predictions: list[Any] | None = None  # generated strings, or chosen option indices
    metric: str = "exact_match"

    @property
    def accuracy(self) -> float:
        """The score under its older name (exact match or multiple-choice accuracy by default)."""
        return self.score


def _tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _device_of(model, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _accepts(model, name: str) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    return name in inspect.signature(base.forward).parameters


def _pad_id(tokenizer) -> int:
    pid = tokenizer.pad_token_id
    return tokenizer.eos_token_id if pid is None else pid


def _default_max_length(model) -> int | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "max_position_embeddings", None)


def _left_truncate(ids: list[int], keep: int | None) -> list[int]:
    if keep is None or len(ids) <= keep:
        return ids
    if keep < 1:
        raise ValueError(f"max_length leaves no room for the prompt (keep={keep})")
    return ids[len(ids) - keep:]


class _eval_mode:
    """model.eval() + inference_mode for the block; training mode restored afterwards."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        self.inf = torch.inference_mode()
        self.inf.__enter__()

    def __exit__(self, *exc):
        self.inf.__exit__(*exc)
        self.model.train(self.was_training)
        return False


def evaluate_task(
    model,
    tokenizer,
    task: Task,
    examples: Sequence[Example] | None = None,
    *,
    batch_size: int = 64,
    mc_scoring: Literal["mean", "sum"] = "mean",
    max_new_tokens: int | None = None,
    template: str = "{prompt}",
    max_length: int | None = None,
    device=None,
    metric: str | None = None,
    chat: bool = False,
) -> EvalResult:
    """Mean score on ``examples`` (default ``task.test``). Generation tasks: greedy generations
    scored with ``metric`` (default ``task.metric``, else exact match after
    :func:`normalize_answer`). Multiple choice: accuracy of the argmax option log-likelihood
    (``mean``: per-token average, ``sum``: total). ``chat``: prompts and answers rendered
    through the tokenizer's chat template, exactly as training renders them."""
    metric = metric_for(task.kind, metric or task.metric)
    examples = list(task.test if examples is None else examples)
    if not examples:
        raise ValueError(f"task '{task.name}': no examples to evaluate")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if mc_scoring not in ("mean", "sum"):
        raise ValueError(f"mc_scoring must be 'mean' or 'sum', got {mc_scoring!r}")
    dev = _device_of(model, device)
    if max_length is None:
        max_length = _default_max_length(model)
    prompts = _tokenize(tokenizer, [render_prompt(tokenizer, template, ex.prompt, chat) for ex in examples])
    if chat:  # answers as the assistant turn's content, as in training
        examples = [replace(ex, target=render_target(ex.target, True),
                            choices=ex.choices and tuple(render_target(c, True) for c in ex.choices))
                    for ex in examples]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is not None:  # an empty prompt gives the model nothing to predict the answer from
        prompts = [p or [start] for p in prompts]
    with _eval_mode(model):
        if task.kind == "generation":
            return _eval_generation(model, tokenizer, examples, prompts, batch_size,
                                    max_new_tokens, max_length, dev, metric)
        return _eval_choice(model, tokenizer, task, examples, prompts, batch_size, mc_scoring,
                            max_length, dev)


def _eval_generation(model, tokenizer, examples, prompts, batch_size, max_new_tokens,
                     max_length, dev, metric) -> EvalResult:
    if max_new_tokens is None:
        max_new_tokens = max(map(len, _tokenize(tokenizer, [ex.target for ex in examples]))) + 2
    keep = None if max_length is None else max_length - max_new_tokens
    prompts = [_left_truncate(p, keep) for p in prompts]
    eos = tokenizer.eos_token_id
    pad = _pad_id(tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding per batch
    outputs: list[list[int]] = [[] for _ in prompts]
    tokens = 0
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        gen, n = greedy_generate(model, [prompts[i] for i in idx], max_new_tokens, eos, pad, dev)
        tokens += n
        for i, g in zip(idx, gen):
            outputs[i] = g
    preds = [tokenizer.decode(g, skip_special_tokens=True) for g in outputs]
    scores = score_texts(metric, preds, [(ex.target, *ex.references) for ex in examples])
    return EvalResult(sum(scores) / len(examples), len(examples), tokens, preds, metric)


def sum_over_processes(accelerator, *values: float) -> list[float]:
    """Each value summed over the processes (float64), so every process gets the same total."""
    if accelerator.num_processes == 1:
        return [float(v) for v in values]
    t = accelerator.reduce(torch.tensor(values, dtype=torch.float64, device=accelerator.device), "sum")
    return [float(v) for v in t]


def evaluate_sharded(accelerator, model, tokenizer, task: Task, examples: Sequence[Example], cfg, *,
                     device=None, chat: bool = False) -> tuple[float, int]:
    """``evaluate_task`` with the evaluation settings of ``cfg`` (a forgetless Config), each process
    scoring its slice of ``examples``: ``(mean score, tokens over all processes)``, the same on every
    process. ``forgetless run`` and the Trainer integration both evaluate through this."""
    acc = accelerator
    shard = list(examples)[acc.process_index :: acc.num_processes]
    correct, n, tokens = 0.0, 0, 0
    if shard:
        r = evaluate_task(model, tokenizer, task, shard, batch_size=cfg.eval.batch_size,
                          mc_scoring=cfg.eval.mc_scoring, max_new_tokens=cfg.eval.max_new_tokens,
                          template=cfg.data.prompt_template, max_length=cfg.data.max_length,
                          device=device if device is not None else acc.device, chat=chat)
        correct, n, tokens = r.accuracy * r.n, r.n, r.tokens
    correct, n, tokens = sum_over_processes(acc, correct, n, tokens)
    return (correct / n if n else 0.0), int(tokens)


def greedy_generate(model, prompts: list[list[int]], max_new_tokens: int, eos_id: int | None,
                    pad_id: int, device) -> tuple[list[list[int]], int]:
    """Greedy continuations of a batch of token-id prompts, each cut before its first EOS.

    Left padding with an attention mask and position ids counted from each row's first real
    token, so a row's result does not depend on what it is batched with. Returns the
    continuations and the token count: prompt tokens + generated tokens (EOS included).
    """
    B = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    mask = torch.zeros((B, width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[r, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with_pos = _accepts(model, "position_ids")  # not e.g. BLOOM (ALiBi from the mask)
    with_keep = _accepts(model, "logits_to_keep")
    tokens = sum(len(p) for p in prompts)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    out = torch.empty((B, 0), dtype=torch.long, device=device)
    past = None
    for _ in range(max_new_tokens):
        extra = {"position_ids": pos} if with_pos else {}
        if with_keep:
            extra["logits_to_keep"] = 1
        res = model(input_ids=ids, attention_mask=mask, past_key_values=past, use_cache=True,
                    **extra)
        past = res.past_key_values
        nxt = res.logits[:, -1, :].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        out = torch.cat([out, nxt[:, None]], dim=1)
        tokens += int((~done).sum())
        if eos_id is not None:
            done = done | (nxt == eos_id)
        if bool(done.all()):
            break
        ids = nxt[:, None]
        mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], dim=1)
        pos = pos[:, -1:] + 1
    gens = []
    for row in out.tolist():
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id)]
        gens.append(row)
    return gens, tokens


def _eval_choice(model, tokenizer, task, examples, prompts, batch_size, mc_scoring, max_length,
                 dev) -> EvalResult:
    seqs: list[tuple[list[int], int]] = []  # (prompt + option ids, option length)
    owner: list[int] = []
    for k, (ex, p) in enumerate(zip(examples, prompts)):
        if not ex.choices or ex.answer is None:
            raise ValueError(f"task '{task.name}': multiple-choice example {k} needs choices and answer")
        for c, opt in zip(ex.choices, _tokenize(tokenizer, list(ex.choices))):
            if not opt:
                raise ValueError(f"task '{task.name}': example {k} has an empty option {c!r}")
            keep = None if max_length is None else max_length - len(opt)
            seqs.append((_left_truncate(p, keep) + opt, len(opt)))
            owner.append(k)
    scores = score_continuations(model, seqs, batch_size, _pad_id(tokenizer), dev)
    if mc_scoring == "mean":
        scores = [s / n for s, (_, n) in zip(scores, seqs)]
    best: list[tuple[float, int]] = [(-math.inf, -1)] * len(examples)
    counters = [0] * len(examples)
    for k, s in zip(owner, scores):
        j = counters[k]
        counters[k] += 1
        if s > best[k][0]:  # strict: ties go to the first option
            best[k] = (s, j)
    preds = [b[1] for b in best]
    correct = sum(p == ex.answer for p, ex in zip(preds, examples))
    tokens = sum(len(ids) for ids, _ in seqs)
    return EvalResult(correct / len(examples), len(examples), tokens, preds, "accuracy")


def score_continuations(model, seqs: list[tuple[list[int], int]], batch_size: int, pad_id: int,
                        device) -> list[float]:
    """Summed log-probability of the last ``n`` tokens of each sequence given what precedes them.

    Right padding (harmless for a causal model: real positions never see the padding), sequences
    sorted by length so each forward pads little.
    """
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    out = [0.0] * len(seqs)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        width = max(len(seqs[i][0]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        target = torch.zeros((len(idx), width), dtype=torch.bool)
        for r, i in enumerate(idx):
            seq, n = seqs[i]
            ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[r, : len(seq)] = 1
            target[r, len(seq) - n : len(seq)] = True
        ids, mask, target = ids.to(device), mask.to(device), target.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1, :]
        sel = target[:, 1:]  # softmax only where an option token is predicted
        lp = torch.log_softmax(logits[sel].float(), dim=-1).gather(-1, ids[:, 1:][sel][:, None]).squeeze(-1)
        rows = torch.arange(len(idx), device=device)[:, None].expand_as(sel)[sel]
        tot = torch.zeros(len(idx), dtype=torch.float32, device=device).index_add_(0, rows, lp)
        for r, i in enumerate(idx):
            out[i] = float(tot[r])
    return out


def general_perplexity(model, tokenizer, texts: Sequence[str], *, max_length: int = 256,
                       batch_size: int = 16, device=None) -> tuple[float, int]:
    """Token-weighted perplexity exp(total NLL / predicted tokens) over ``texts``.

    Each text is tokenized without special tokens, cut to ``max_length - 1`` tokens and EOS is
    appended; padding is masked. Returns the perplexity and the tokens processed.
    """
    if max_length < 2:
        raise ValueError("max_length must be >= 2")
    eos = tokenizer.eos_token_id
    seqs = []
    for ids in _tokenize(tokenizer, list(texts)):
        seqs.append(ids[: max_length - 1] + ([eos] if eos is not None else []))
    seqs = [s for s in seqs if len(s) >= 2]
    if not seqs:
        raise ValueError("general_perplexity needs at least one text of >= 1 token")
    dev = _device_of(model, device)
    pad = _pad_id(tokenizer)
    nll, count = 0.0, 0
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    with _eval_mode(model):
        for s in range(0, len(order), batch_size):
            batch = [seqs[i] for i in order[s : s + batch_size]]
            width = max(len(x) for x in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, x in enumerate(batch):
                ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
                labels[r, : len(x)] = ids[r, : len(x)]
                mask[r, : len(x)] = 1
            ids, labels, mask = ids.to(dev), labels.to(dev), mask.to(dev)
            tl, has_label = token_losses(model(input_ids=ids, attention_mask=mask).logits, labels)
            nll += float((tl * has_label).sum())
            count += int(has_label.sum())
    return math.exp(nll / count), sum(len(x) for x in seqs)
