"""Task accuracy of a (possibly PEFT-wrapped) Hugging Face causal LM, and general perplexity.

Prompts and answers are tokenized the way training tokenizes them (``data/tokenize.py``): BOS
when the tokenizer adds one, the (templated) prompt and the answer separately, without special
tokens, then concatenated; a prompt too long for ``max_length`` loses tokens from the left.

- Generation: ``model.generate``, greedy, left padding, stopping at the end-of-turn / EOS tokens;
  its length is ``eval.max_new_tokens`` or the longest TRAINING target + 2, never a test target.
- Multiple choice: one forward of each prompt (``logits_to_keep=1``) fills the KV cache; the
  cache is copied to one row per option and all options of a batch run in one forward on it,
  keeping only the logits of positions that predict an option token. No option re-reads its
  prompt and no full-vocabulary logits are built that are not read.
- Perplexity: the forwards are split so no logits tensor exceeds ``LOGITS_BUDGET`` elements.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace
from typing import Any, Literal, Sequence

import torch

from forgetless.data.task import Example, Task
from forgetless.data.tokenize import render_prompt, render_target, special_tokens, with_bos
from forgetless.losses import token_losses
from forgetless.scoring import metric_for, normalize_answer, score_texts  # noqa: F401 (re-exported)

LOGITS_BUDGET = 1 << 26  # elements of one perplexity forward's logits (256 MB in fp32)


@dataclass
class EvalResult:
    score: float  # mean of the per-example scores of ``metric`` (accuracy for multiple choice)
    n: int
    tokens: int  # tokens the model processed: prompt + generated, or each prompt once + its options
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


class _eval_mode:
    """model.eval() + no_grad for the block; training mode restored afterwards. Not inference_mode:
    under FSDP2 the parameters gathered in an evaluation forward would be inference tensors, and the
    next training forward's all-gather, which copies into them, fails."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        self.inf = torch.no_grad()
        self.inf.__enter__()

    def __exit__(self, *exc):
        self.inf.__exit__(*exc)
        self.model.train(self.was_training)
        return False


def generation_length(tokenizer, task: Task, setting: int | None = None, chat: bool = False) -> int:
    """New tokens a generation may take: ``setting`` (``eval.max_new_tokens``) when given, else
    the task's longest TRAINING target + 2 (END and one spare). Test targets never set it: the
    gold answers must not tell the model how long to talk. A task without training examples
    gets ``config.GENERATION_TOKENS_WITHOUT_TRAIN``."""
    from forgetless.config import GENERATION_TOKENS_WITHOUT_TRAIN

    if setting is not None:
        return setting
    targets = _tokenize(tokenizer, [render_target(ex.target, chat) for ex in task.train])
    return max(map(len, targets)) + 2 if targets else GENERATION_TOKENS_WITHOUT_TRAIN


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
    (length: :func:`generation_length`) scored with ``metric`` (default ``task.metric``, else
    exact match after :func:`normalize_answer`). Multiple choice: accuracy of the argmax option
    log-likelihood (``mean``: per-token average, ``sum``: total). ``chat``: prompts and answers
    rendered through the tokenizer's chat template, exactly as training renders them.
    ``batch_size`` counts sequences: prompts for generation, options for multiple choice."""
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
    sp = special_tokens(tokenizer, chat)
    prompts = _tokenize(tokenizer, [render_prompt(tokenizer, template, ex.prompt, chat) for ex in examples])
    if chat:  # answers as the assistant turn's content, as in training
        examples = [replace(ex, target=render_target(ex.target, True),
                            choices=ex.choices and tuple(render_target(c, True) for c in ex.choices))
                    for ex in examples]

    def frame(p: list[int], room: int) -> list[int]:
        # BOS + prompt cut to what leaves ``room`` tokens; an empty prompt gives the model nothing
        # to predict from, so it is EOS when there is no BOS
        return with_bos(p, sp.bos, None if max_length is None else max_length - room) or [sp.stop[-1]]

    with _eval_mode(model):
        if task.kind == "generation":
            n_new = generation_length(tokenizer, task, max_new_tokens, chat)
            return _eval_generation(model, tokenizer, examples, [frame(p, n_new) for p in prompts], batch_size,
                                    n_new, sp.stop, dev, metric)
        options = []
        for k, ex in enumerate(examples):
            if not ex.choices or ex.answer is None:
                raise ValueError(f"task '{task.name}': multiple-choice example {k} needs choices and answer")
            opts = _tokenize(tokenizer, list(ex.choices))
            for c, o in zip(ex.choices, opts):
                if not o:
                    raise ValueError(f"task '{task.name}': example {k} has an empty option {c!r}")
            options.append(opts)
        prompts = [frame(p, max(map(len, o))) for p, o in zip(prompts, options)]
        return _eval_choice(model, tokenizer, examples, prompts, options, batch_size, mc_scoring, dev)


def _eval_generation(model, tokenizer, examples, prompts, batch_size, max_new_tokens, stop, dev,
                     metric) -> EvalResult:
    pad = _pad_id(tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding per batch
    outputs: list[list[int]] = [[] for _ in prompts]
    tokens = 0
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        gen, n = greedy_generate(model, [prompts[i] for i in idx], max_new_tokens, stop, pad, dev)
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
    process. ``forgetless run`` and the Trainer integration both evaluate through this.

    Under FSDP every forward gathers parameters, a collective all processes must join, so slices
    of different sizes (or generations of different lengths) would hang: there each process
    scores every example, the same forwards everywhere, and ``tokens`` counts one process's."""
    acc = accelerator
    sliced = str(getattr(acc.distributed_type, "value", acc.distributed_type)) != "FSDP"
    shard = list(examples)[acc.process_index :: acc.num_processes] if sliced else list(examples)
    correct, n, tokens = 0.0, 0, 0
    if shard:
        r = evaluate_task(model, tokenizer, task, shard, batch_size=cfg.eval.batch_size,
                          mc_scoring=cfg.eval.mc_scoring, max_new_tokens=cfg.eval.max_new_tokens,
                          template=cfg.data.prompt_template, max_length=cfg.data.max_length,
                          device=device if device is not None else acc.device, chat=chat)
        correct, n, tokens = r.accuracy * r.n, r.n, r.tokens
    if sliced:
        correct, n, tokens = sum_over_processes(acc, correct, n, tokens)
    return (correct / n if n else 0.0), int(tokens)


def _left_padded(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[r, width - len(p):] = 1
    return ids.to(device), mask.to(device)


# plain greedy decoding: the model's own generation_config (sampling settings, repetition
# penalty) fills only what is not set here, so these are set to their neutral values
_GREEDY = dict(do_sample=False, num_beams=1, temperature=1.0, top_k=50, top_p=1.0, repetition_penalty=1.0,
               no_repeat_ngram_size=0, min_new_tokens=0)


def _fsdp_sharded(model) -> bool:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    return any(isinstance(m, (FSDPModule, FullyShardedDataParallel)) for m in model.modules())


def greedy_generate(model, prompts: list[list[int]], max_new_tokens: int, stop_ids: int | Sequence[int],
                    pad_id: int, device) -> tuple[list[list[int]], int]:
    """Greedy continuations of a batch of token-id prompts by ``model.generate``, each cut before
    its first stop token (EOS, end-of-turn). Left padding with an attention mask, so a row's
    result does not depend on what it is batched with. Returns the continuations and the token
    count: prompt tokens + generated tokens (the stop token included)."""
    from transformers import GenerationConfig

    stop = [int(stop_ids)] if isinstance(stop_ids, int) else [int(i) for i in stop_ids]
    if not stop:
        raise ValueError("greedy_generate needs at least one stop token")
    ids, mask = _left_padded(prompts, pad_id, device)
    cfg = GenerationConfig(**_GREEDY, max_new_tokens=max_new_tokens, eos_token_id=stop, pad_token_id=pad_id)
    # under FSDP a process that is done keeps joining the others' forwards (transformers detects only
    # its own FSDP wrapping, not Accelerate's); None leaves the choice to transformers
    synced = True if _fsdp_sharded(model) else None
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg,
                         synced_gpus=synced)[:, ids.shape[1]:]
    gens, tokens = [], sum(len(p) for p in prompts)
    for row in out.tolist():
        cut = next((i for i, t in enumerate(row) if t in stop), None)
        gens.append(row if cut is None else row[:cut])
        tokens += len(row) if cut is None else cut + 1
    return gens, tokens


def _eval_choice(model, tokenizer, examples, prompts, options, batch_size, mc_scoring, dev) -> EvalResult:
    scores = score_options(model, prompts, options, batch_size, _pad_id(tokenizer), dev)
    preds = []
    for sc, opts in zip(scores, options):
        if mc_scoring == "mean":
            sc = [s / len(o) for s, o in zip(sc, opts)]
        preds.append(max(range(len(sc)), key=lambda j: (sc[j], -j)))  # ties go to the first option
    correct = sum(p == ex.answer for p, ex in zip(preds, examples))
    tokens = sum(len(p) + sum(map(len, o)) for p, o in zip(prompts, options))
    return EvalResult(correct / len(examples), len(examples), tokens, preds, "accuracy")


def score_options(model, prompts: list[list[int]], options: list[list[list[int]]], batch_size: int, pad_id: int,
                  device) -> list[list[float]]:
    """Summed log-probability of every option of every prompt, given the prompt.

    Prompts are batched (sorted by length, left padding) until their options fill ``batch_size``
    rows. One forward per batch of prompts (``logits_to_keep=1``: the logits of the last
    position, which score every option's first token) fills the KV cache; the cache is copied to
    one row per option, and one forward of the options (right padding, positions continuing the
    prompt) on it gives the rest, with logits only where an option token is predicted.
    """
    keep = _accepts(model, "logits_to_keep")
    with_pos = _accepts(model, "position_ids")  # not e.g. BLOOM (ALiBi from the mask)
    order = sorted(range(len(prompts)), key=lambda k: len(prompts[k]))
    out = [[0.0] * len(o) for o in options]
    s = 0
    while s < len(order):
        idx, rows = [], 0
        while s < len(order) and (not idx or rows + len(options[order[s]]) <= batch_size):
            idx.append(order[s])
            rows += len(options[order[s]])
            s += 1
        ids, mask = _left_padded([prompts[k] for k in idx], pad_id, device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        extra = {"position_ids": pos} if with_pos else {}
        res = model(input_ids=ids, attention_mask=mask, use_cache=True, **extra,
                    **({"logits_to_keep": 1} if keep else {}))
        first = torch.log_softmax(res.logits[:, -1, :].float(), dim=-1)  # (prompts, V)
        opts = [(b, j, o) for b, k in enumerate(idx) for j, o in enumerate(options[k])]
        owner = torch.tensor([b for b, _, _ in opts], device=device)
        tot = first[owner, torch.tensor([o[0] for _, _, o in opts], device=device)]
        width = max(len(o) for _, _, o in opts)
        if width > 1:  # tokens after the first: one forward of all options on the prompts' cache
            cache = res.cache
            if cache is None:
                raise ValueError("the model returned no KV cache for use_cache=True")
            cache.batch_select_indices(owner)
            oid = torch.full((len(opts), width), pad_id, dtype=torch.long)
            omask = torch.zeros((len(opts), width), dtype=torch.long)
            for r, (_, _, o) in enumerate(opts):
                oid[r, : len(o)] = torch.tensor(o, dtype=torch.long)
                omask[r, : len(o)] = 1
            oid, omask = oid.to(device), omask.to(device)
            need = torch.zeros_like(omask, dtype=torch.bool)
            need[:, :-1] = omask[:, 1:].bool()  # position i predicts option token i + 1
            extra = {"position_ids": pos[owner, -1:] + 1 + torch.arange(width, device=device)} if with_pos else {}
            if keep:
                extra["logits_to_keep"] = need
            logits = model(input_ids=oid, attention_mask=torch.cat([mask[owner], omask], dim=1), cache=cache,
                           use_cache=True, **extra).logits
            logits = logits if keep else logits[need]  # (option tokens after the first, V)
            lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, oid[:, 1:][need[:, :-1]][:, None]).squeeze(-1)
            rows_of = torch.arange(len(opts), device=device)[:, None].expand_as(need)[need]
            tot = tot.index_add(0, rows_of, lp)
        for (b, j, _), v in zip(opts, tot.tolist()):
            out[idx[b]][j] = v
    return out


def general_perplexity(model, tokenizer, texts: Sequence[str], *, max_length: int = 256,
                       batch_size: int = 16, device=None) -> tuple[float, int]:
    """Token-weighted perplexity exp(total NLL / predicted tokens) over ``texts``.

    Each text is tokenized without special tokens, cut to ``max_length - 1`` tokens (less BOS,
    put in front when the tokenizer adds one) and EOS is appended; padding is masked. Each batch
    runs in as many forwards as keep its logits under ``LOGITS_BUDGET`` elements. Returns the
    perplexity and the tokens processed.
    """
    from forgetless.data.tokenize import bos_token

    if max_length < 2:
        raise ValueError("max_length must be >= 2")
    eos, bos = tokenizer.eos_token_id, bos_token(tokenizer)
    body = max_length - 1 - (bos is not None)
    seqs = []
    for ids in _tokenize(tokenizer, list(texts)):
        seqs.append(with_bos(ids[:body], bos) + ([eos] if eos is not None else []))
    seqs = [s for s in seqs if len(s) >= 2]
    if not seqs:
        raise ValueError("general_perplexity needs at least one text of >= 1 token")
    dev = _device_of(model, device)
    pad = _pad_id(tokenizer)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or len(tokenizer)
    nll, count = 0.0, 0
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    with _eval_mode(model):
        for s in range(0, len(order), batch_size):
            batch = [seqs[i] for i in order[s : s + batch_size]]
            width = max(len(x) for x in batch)
            per = max(1, LOGITS_BUDGET // (width * vocab))
            for c in range(0, len(batch), per):
                chunk = batch[c : c + per]
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                labels = torch.full((len(chunk), width), -100, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for r, x in enumerate(chunk):
                    ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
                    labels[r, : len(x)] = ids[r, : len(x)]
                    mask[r, : len(x)] = 1
                ids, labels, mask = ids.to(dev), labels.to(dev), mask.to(dev)
                tl, has_label = token_losses(model(input_ids=ids, attention_mask=mask).logits, labels)
                nll += float((tl * has_label).sum())
                count += int(has_label.sum())
    return math.exp(nll / count), sum(len(x) for x in seqs)
