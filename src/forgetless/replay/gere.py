"""GeRe: General Sample Replay (Zhang et al., arXiv 2508.04676). See docs/gere.md.

A fixed set of general texts, cut into ``seq_len``-token samples, is replayed during every task.
Besides their next-token loss (already in the loop's main loss), an auxiliary loss keeps the
model's last-layer hidden states (the LM-head input) close to those of the frozen starting model:
the threshold-based margin (TM) loss, or KL / L1 / L2 imitation for comparison.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from forgetless.data.task import Sample
from forgetless.errors import InputError
from forgetless.losses import token_losses
from forgetless.replay.base import BaseStrategy, ReplayBatch, StrategyContext, register

CACHE_VERSION = 1
_RNG_SALT = 0x6E5E  # keeps GeRe's random stream apart from other strategies' with the same seed


# ---- statistics and thresholds ----------------------------------------------------------------

class RunningStats:
    """Streaming per-dimension mean / variance in float64 (Chan et al.'s parallel merge).

    Each batch is reduced exactly (two-pass) and merged into the running moments, so the result
    does not suffer the cancellation of sum / sum-of-squares formulas when |mean| >> std.
    """

    def __init__(self, dim: int):
        self.count = 0
        self.mean = np.zeros(dim, dtype=np.float64)
        self.m2 = np.zeros(dim, dtype=np.float64)

    def update(self, x) -> None:
        """Add rows of ``x`` (n, dim)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.mean.shape[0])
        if x.shape[0] == 0:
            return
        other = RunningStats(x.shape[1])
        other.count = x.shape[0]
        other.mean = x.mean(axis=0)
        other.m2 = ((x - other.mean) ** 2).sum(axis=0)
        self.merge(other)

    def merge(self, other: "RunningStats") -> None:
        if other.count == 0:
            return
        n = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / n)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        self.count = n

    @property
    def var(self) -> np.ndarray:
        """Population variance (ddof = 0)."""
        return self.m2 / max(self.count, 1)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)

    def thresholds(self, k: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        s = self.std
        return self.mean + k * s, self.mean - k * s

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean.copy(), "m2": self.m2.copy()}

    def load_state_dict(self, d: dict) -> None:
        self.count = int(d["count"])
        self.mean = np.asarray(d["mean"], dtype=np.float64)
        self.m2 = np.asarray(d["m2"], dtype=np.float64)


def margin_thresholds(hidden: torch.Tensor, mask: torch.Tensor, k: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """tau+ = mean + k*std, tau- = mean - k*std per dimension over the real tokens (population std)."""
    h = hidden.reshape(-1, hidden.shape[-1])[mask.reshape(-1).bool()].double()
    mean = h.mean(dim=0)
    std = h.var(dim=0, correction=0).sqrt()
    return (mean + k * std).to(hidden.dtype), (mean - k * std).to(hidden.dtype)


# ---- auxiliary losses ---------------------------------------------------------------------------

def _mask3(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if mask is None else mask.to(like.dtype).unsqueeze(-1)


def tm_loss(hidden: torch.Tensor, ref_hidden: torch.Tensor, tau_pos: torch.Tensor, tau_neg: torch.Tensor,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Threshold-based margin loss: keep each activation on the reference's side of the band.

    States come from the reference: > tau+ positive, < tau- negative, otherwise neutral.
    Sum of element losses over the masked tokens / (number of nonzero element losses + 1e-8).
    """
    h = hidden.float()
    ref = ref_hidden.float()
    tp, tn = tau_pos.float(), tau_neg.float()
    pos = ref > tp
    neg = ref < tn
    neutral_loss = F.relu(h - tp) + F.relu(tn - h)
    elem = torch.where(pos, F.relu(tp - h), torch.where(neg, F.relu(h - tn), neutral_loss))
    m = _mask3(mask, elem)
    if m is not None:
        elem = elem * m
    n_nonzero = (elem.detach() > 0).sum()
    return elem.sum() / (n_nonzero + 1e-8)


def _masked_mean_tokens(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over tokens of a (n, L) tensor, counting only masked tokens."""
    if mask is None:
        return per_token.mean()
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp_min(1.0)


def l1_loss(hidden: torch.Tensor, ref_hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute difference per element over the masked tokens."""
    d = (hidden.float() - ref_hidden.float()).abs().mean(dim=-1)
    return _masked_mean_tokens(d, mask)


def l2_loss(hidden: torch.Tensor, ref_hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference per element over the masked tokens."""
    d = (hidden.float() - ref_hidden.float()).pow(2).mean(dim=-1)
    return _masked_mean_tokens(d, mask)


def reference_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and values of the k largest logits per token (what GeRe stores for KL)."""
    vals, idx = logits.float().topk(min(k, logits.shape[-1]), dim=-1)
    return idx, vals


def kl_loss(logits: torch.Tensor, ref_idx: torch.Tensor, ref_val: torch.Tensor, temperature: float = 2.0,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(p_ref || p_model) at temperature T over the reference's top-k support.

    Both distributions are softmaxes over the same k stored token ids (renormalised on that
    support), so storage is k ids + k values per token instead of the whole vocabulary.
    """
    t = float(temperature)
    student = logits.float().gather(-1, ref_idx.long()) / t
    teacher = ref_val.float() / t
    log_p_ref = F.log_softmax(teacher, dim=-1)
    log_p = F.log_softmax(student, dim=-1)
    kl = (log_p_ref.exp() * (log_p_ref - log_p)).sum(dim=-1)
    return _masked_mean_tokens(kl, mask) * t * t


def aux_weight(mode: str | float, ce: torch.Tensor | float | None, aux: torch.Tensor) -> torch.Tensor:
    """Weight of the auxiliary loss: a number (the paper's 1 or 100), or "dynamic" = CE / aux with
    no gradient through it."""
    if mode == "dynamic":
        a = aux.detach()
        c = torch.as_tensor(ce, dtype=a.dtype, device=a.device).detach()
        return torch.where(a > 0, c / torch.where(a > 0, a, torch.ones_like(a)), torch.zeros_like(a))
    try:
        return aux.new_tensor(float(mode))
    except (TypeError, ValueError):
        raise ValueError(f"unknown GeRe weight {mode!r}; expected a number or 'dynamic'") from None


# ---- general samples ------------------------------------------------------------------------------

def read_texts(source: str | os.PathLike) -> list[str]:
    """Documents of a JSONL file (field "text") or of a plain-text file (blank-line separated)."""
    path = Path(source)
    if not path.is_file():
        raise InputError("general-text source not found", file=str(path), field="replay.gere.source")
    if path.suffix.lower() == ".jsonl":
        from forgetless.data.loaders import read_jsonl

        docs = []
        for lineno, obj in read_jsonl(path):
            if "text" not in obj:
                raise InputError("missing field", file=str(path), line=lineno, field="text")
            if not isinstance(obj["text"], str):
                raise InputError("must be a string", file=str(path), line=lineno, field="text")
            if obj["text"].strip():
                docs.append(obj["text"])
        return docs
    from forgetless.errors import read_text

    text = read_text(path)
    return [d.strip() for d in text.replace("\r\n", "\n").split("\n\n") if d.strip()]


def check_source(source: str | None, strategies: list[str]) -> None:
    """A bad general-text source fails before a model loads or anything is written."""
    if source is not None and any("gere" in s.split("+") for s in strategies):
        read_texts(source)


def build_general_samples(texts: list[str], tokenizer, n_samples: int, seq_len: int, seed: int = 0,
                          source: str = "general texts") -> list[Sample]:
    """``n_samples`` windows of exactly ``seq_len`` tokens from the concatenated documents.

    Documents are taken in a seeded order, joined with EOS and cut into consecutive
    non-overlapping windows (each starts with BOS when the tokenizer normally adds one). Every
    token is a label. Too little text gives fewer samples and a warning (no wrap-around, so no
    sample repeats text).
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    from forgetless.data.tokenize import bos_token

    bos = bos_token(tokenizer)  # the same rule as training and evaluation
    body = seq_len - (bos is not None)
    need = n_samples * body
    order = np.random.default_rng([seed, _RNG_SALT]).permutation(len(texts))
    chunks: list[np.ndarray] = []
    have = 0
    step = 64
    for start in range(0, len(order), step):
        if have >= need:
            break
        batch = [texts[i] for i in order[start:start + step]]
        for ids in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]:
            arr = np.asarray(list(ids) + ([eos] if eos is not None else []), dtype=np.int64)
            chunks.append(arr)
            have += arr.shape[0]
    stream = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    n = min(n_samples, stream.shape[0] // body)
    if n == 0:
        raise InputError(f"general texts give {stream.shape[0]} tokens, fewer than one sample of {seq_len}",
                         file=source, field="replay.gere.seq_len")
    if n < n_samples:
        warnings.warn(f"GeRe: {source} gives only {stream.shape[0]} tokens: {n} general samples of "
                      f"{seq_len} tokens instead of {n_samples}", stacklevel=2)
    windows = stream[: n * body].reshape(n, body)
    if bos is not None:
        windows = np.concatenate([np.full((n, 1), bos, dtype=np.int64), windows], axis=1)
    return [Sample(sample_id=-(i + 1), task_id=-1, input_ids=windows[i].copy(), labels=windows[i].copy())
            for i in range(n)]


def general_row(sample_ids) -> np.ndarray:
    """Reference row of each general sample id (-1 -> 0, -2 -> 1, ...)."""
    return -np.asarray(sample_ids, dtype=np.int64) - 1


# ---- reference activations (disk cache) -----------------------------------------------------------

def _unwrap(model):
    return getattr(model, "module", model)  # DDP


def _model_fingerprint(model) -> str:
    """Cheap guard against 'same name, other weights': a hash of the first input-embedding rows."""
    emb = _unwrap(model).get_input_embeddings().weight
    head = emb.detach()[:8].float().cpu().numpy()
    return hashlib.sha256(head.tobytes()).hexdigest()[:16] + f"-{tuple(emb.shape)}"


def cache_key(model_name: str, samples: list[Sample], parts: list[str], fingerprint: str = "") -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "model": model_name, "parts": parts, "fp": fingerprint}).encode())
    for s in samples:
        h.update(s.input_ids.astype(np.int64).tobytes())
    return h.hexdigest()[:24]


class ReferenceStore:
    """Memory-mapped reference arrays of one cache entry (a directory of .npy files + meta.json).

    ``hidden`` (N, L, D) float16; ``topk_idx`` (N, L, K) int32 and ``topk_val`` (N, L, K) float16
    when KL is used; ``stats.npz`` holds the RunningStats of the hidden states over real tokens.
    """

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.meta = json.loads((self.dir / "meta.json").read_text())
        self.arrays = {p: np.load(self.dir / f"{p}.npy", mmap_mode="r") for p in self.meta["arrays"]}
        self.stats = RunningStats(self.meta["dim"])
        with np.load(self.dir / "stats.npz", allow_pickle=False) as z:
            self.stats.load_state_dict({k: z[k] for k in z.files})

    def rows(self, name: str, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` of one array, read in sorted order (sequential disk access), returned in order."""
        idx = np.asarray(idx, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        out = np.empty((idx.shape[0],) + self.arrays[name].shape[1:], dtype=self.arrays[name].dtype)
        out[order] = self.arrays[name][idx[order]]
        return out

    @staticmethod
    def write(directory: Path, arrays: dict[str, tuple[tuple, np.dtype]], fill) -> "ReferenceStore":
        """Create the entry atomically: ``fill(memmaps) -> (stats, dim)`` writes into a temp dir that
        is renamed into place; if another process got there first, its entry is used."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
        try:
            maps = {name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dt, shape=shape)
                    for name, (shape, dt) in arrays.items()}
            t0 = time.perf_counter()
            stats, dim = fill(maps)
            seconds = time.perf_counter() - t0  # charged to every run that uses the entry (time_reference_s)
            for m in maps.values():
                m.flush()
            del maps
            np.savez(tmp / "stats.npz", **{k: np.asarray(v) for k, v in stats.state_dict().items()})
            (tmp / "meta.json").write_text(json.dumps({"arrays": list(arrays), "dim": dim, "version": CACHE_VERSION,
                                                         "time_s": seconds}))
            try:
                os.rename(tmp, directory)
            except OSError:
                if not (directory / "meta.json").is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return ReferenceStore(directory)


def _adapter_off(model):
    m = _unwrap(model)
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return nullcontext()
    return m.disable_adapter() if isinstance(m, PeftModel) else nullcontext()


@torch.no_grad()
def compute_references(model, samples: list[Sample], directory: Path, *, store_hidden: bool = True,
                       top_k: int | None = None, batch_size: int = 8, device=None) -> tuple[ReferenceStore, int]:
    """Run the starting model (adapters disabled) over the samples; store what the losses need.

    Returns the store and the number of tokens forwarded (0 when the cache entry existed).
    """
    directory = Path(directory)
    if (directory / "meta.json").is_file():
        return ReferenceStore(directory), 0
    net = _unwrap(model)
    if device is None:
        device = next(net.parameters()).device
    n, seq_len = len(samples), samples[0].n_tokens
    dim = net.get_output_embeddings().weight.shape[1] if net.get_output_embeddings() is not None \
        else net.config.hidden_size
    arrays: dict[str, tuple[tuple, Any]] = {}
    if store_hidden:
        arrays["hidden"] = ((n, seq_len, dim), np.float16)
    if top_k is not None:
        k = min(top_k, net.get_output_embeddings().weight.shape[0])
        arrays["topk_idx"] = ((n, seq_len, k), np.int32)
        arrays["topk_val"] = ((n, seq_len, k), np.float16)

    def fill(maps):
        stats = RunningStats(dim)
        was_training = net.training
        net.eval()
        try:
            with _adapter_off(net):
                for start in range(0, n, batch_size):
                    chunk = samples[start:start + batch_size]
                    ids = torch.as_tensor(np.stack([s.input_ids for s in chunk]), device=device)
                    kw = {} if top_k is not None else {"logits_to_keep": 1}
                    out = net(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True,
                              use_cache=False, **kw)
                    h = out.hidden_states[-1].float()
                    if start == 0:
                        _check_lm_head_input(net, h, out.logits)
                    h_cpu = h.cpu().numpy()
                    stats.update(h_cpu.reshape(-1, dim))  # every token is real: samples are unpadded
                    sl = slice(start, start + len(chunk))
                    if "hidden" in maps:
                        maps["hidden"][sl] = h_cpu.astype(np.float16)
                    if top_k is not None:
                        idx, val = reference_topk(out.logits, k)
                        maps["topk_idx"][sl] = idx.cpu().numpy().astype(np.int32)
                        maps["topk_val"][sl] = val.cpu().numpy().astype(np.float16)
        finally:
            net.train(was_training)
        return stats, dim

    return ReferenceStore.write(directory, arrays, fill), n * seq_len


def _check_lm_head_input(net, h_last: torch.Tensor, logits: torch.Tensor) -> None:
    """hidden_states[-1] should be the LM-head input (post final norm); warn when it is not."""
    head = net.get_output_embeddings()
    if head is None:
        return
    got = head(h_last[:, -logits.shape[1]:].to(head.weight.dtype)).float()
    if not torch.allclose(got, logits.float(), rtol=1e-2, atol=1e-2 * float(logits.float().abs().max()) + 1e-3):
        warnings.warn("GeRe: lm_head(hidden_states[-1]) differs from the logits for this model; the TM "
                      "loss constrains hidden_states[-1] as returned", stacklevel=3)


# ---- the strategy -----------------------------------------------------------------------------------

def _align(t: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor, length: int) -> torch.Tensor:
    """``t[rows, off:off+length]`` per row (rows of a right- or left-padded merged batch)."""
    if bool((offsets == 0).all()):
        return t[rows, :length]
    pos = offsets[:, None] + torch.arange(length, device=t.device)[None, :]
    sub = t[rows]
    if sub.dim() == 2:
        return sub.gather(1, pos)
    return sub.gather(1, pos[..., None].expand(-1, -1, sub.shape[-1]))


@register("gere")
class GeRe(BaseStrategy):
    """General sample replay with a TM (or KL / L1 / L2) loss on the last-layer hidden states.

    Replays during every task, including the first; ``replay.budget`` does not apply (the general
    samples are not task replay).
    """

    name = "gere"
    needs_hidden_states = True

    def __init__(self, ctx: StrategyContext):
        super().__init__(ctx)
        self.cfg = ctx.config.replay.gere
        self.rng = np.random.default_rng([ctx.seed, _RNG_SALT])
        self.samples: list[Sample] | None = None
        self.store: ReferenceStore | None = None
        self.cache_key: str | None = None
        self._resumed_key: str | None = None
        # the references belong to the starting model: its identity is taken now, before a resumed
        # run loads trained weights, so a resume finds the same cache entry with LoRA or full FT
        self._base_fp = _model_fingerprint(ctx.model) if ctx.model is not None else ""
        if ctx.model is not None and ctx.tokenizer is not None:
            self._ensure_samples()  # a bad general-text source fails before the run writes anything
            # now, while the weights are the starting model's (with full fine-tuning the only moment),
            # and outside the run's timers: the cost is charged from the cache entry instead
            self._ensure_references()
        self.perm = np.zeros(0, dtype=np.int64)
        self.pos = 0
        self._tau: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last: dict[str, torch.Tensor] = {}  # detached aux / weight of the last step, for logging

    # -- setup --------------------------------------------------------------------------------
    def _ensure_samples(self) -> list[Sample]:
        if self.samples is None:
            if self.cfg.source is None:
                from forgetless.data.general import general_texts

                texts, source = general_texts("train"), "general_texts('train')"
            else:
                texts, source = read_texts(self.cfg.source), self.cfg.source
            self.samples = build_general_samples(texts, self.ctx.tokenizer, self.cfg.n_samples,
                                                 self.cfg.seq_len, self.ctx.seed, source)
        return self.samples

    def _parts(self) -> list[str]:
        if self.cfg.loss in ("tm", "l1", "l2"):
            return ["hidden"]
        if self.cfg.loss == "kl":
            return [f"topk{self.cfg.kl_top_k}"]
        return []

    def cache_dir(self) -> Path:
        base = Path(self.ctx.run_dir).parent if self.ctx.run_dir is not None else Path(tempfile.gettempdir())
        return base / ".cache" / "gere"

    def _ensure_references(self) -> None:
        if self.store is not None or self.cfg.loss == "ce":
            return
        samples = self._ensure_samples()
        mcfg = self.ctx.config.model
        name = f"{mcfg.name}@{mcfg.revision}:{mcfg.dtype}"
        fp = self._base_fp or _model_fingerprint(self.ctx.model)
        self.cache_key = cache_key(name, samples, self._parts(), fp)
        directory = self.cache_dir() / self.cache_key
        self._check_resumed_key()
        self.store, _ = compute_references(
            self.ctx.model, samples, directory, store_hidden=self.cfg.loss in ("tm", "l1", "l2"),
            top_k=self.cfg.kl_top_k if self.cfg.loss == "kl" else None,
            batch_size=self.cfg.ref_batch_size, device=self.ctx.device)
        # charged to every run that uses the references, whether this one computed them or found them
        # cached (runs sharing an output directory share the cache): set, not added, so a resume agrees
        self.ctx.counters.reference_tokens = len(samples) * samples[0].n_tokens
        self.ctx.counters.time_reference_s = float(self.store.meta.get("time_s", 0.0))

    def _check_resumed_key(self) -> None:
        if self._resumed_key is not None and self.cache_key is not None and self._resumed_key != self.cache_key:
            raise InputError(f"GeRe: the run's reference activations ({self._resumed_key}) are not those of "
                             f"this starting model and general samples ({self.cache_key}); resume with the same "
                             "model and replay.gere settings", field="model.name")

    def thresholds(self) -> tuple[torch.Tensor, torch.Tensor]:
        tp, tn = self.store.stats.thresholds(self.cfg.k)
        return torch.as_tensor(tp, dtype=torch.float32), torch.as_tensor(tn, dtype=torch.float32)

    # -- contract -----------------------------------------------------------------------------
    def on_task_start(self, task, task_index: int, step: int) -> None:
        self._ensure_samples()
        self._ensure_references()

    def _take(self, count: int) -> np.ndarray:
        """Next ``count`` indices from successive seeded permutations; at a permutation boundary the
        group continues into the next one, skipping indices already in the group when possible."""
        n = len(self._ensure_samples())
        group: list[int] = []
        while len(group) < count:
            if self.pos >= self.perm.shape[0]:
                p = self.rng.permutation(n)
                if group and n >= count:  # move repeats of this group's indices behind the ones it needs
                    fresh = [int(i) for i in p if int(i) not in group]
                    need = count - len(group)
                    p = np.asarray(fresh[:need] + [int(i) for i in p if int(i) in group] + fresh[need:],
                                   dtype=np.int64)
                self.perm, self.pos = p, 0
            take = min(count - len(group), self.perm.shape[0] - self.pos)
            group += [int(i) for i in self.perm[self.pos:self.pos + take]]
            self.pos += take
        return np.asarray(group, dtype=np.int64)

    def n_general(self, batch_size: int) -> int:
        """General samples to merge this step."""
        if self.cfg.mixing == "interpolate":
            return self.cfg.per_batch
        whole = int(np.floor(self.cfg.ratio))
        return whole * batch_size + int(self.rng.binomial(batch_size, self.cfg.ratio - whole))

    def replay_batch(self, step: int, batch_size: int) -> ReplayBatch | None:
        count = self.n_general(batch_size)
        if count <= 0:
            return None
        samples = self._ensure_samples()
        return ReplayBatch([samples[i] for i in self._take(count)])

    def extra_loss(self, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor | None:
        if self.cfg.loss == "ce":
            return None
        ids = batch["sample_ids"]
        rows = torch.nonzero(ids < 0).flatten()
        if rows.numel() == 0:
            return None
        self._ensure_references()
        ref_rows = general_row(ids[rows].cpu().numpy())
        length = self.samples[0].n_tokens
        am = batch["attention_mask"]
        if am.shape[1] < length:
            raise RuntimeError(f"GeRe: merged batch has {am.shape[1]} positions, general samples have {length}; "
                               "data.max_length must not truncate them")
        offsets = am[rows].long().argmax(dim=1)  # first real token: 0 when right-padded
        mask = _align(am, rows, offsets, length).bool() & (_align(batch["labels"], rows, offsets, length) != -100)
        dev = am.device
        if self.cfg.loss == "kl":
            logits = _align(outputs.logits, rows, offsets, length)
            idx = torch.as_tensor(self.store.rows("topk_idx", ref_rows), device=dev)
            val = torch.as_tensor(self.store.rows("topk_val", ref_rows), device=dev)
            aux = kl_loss(logits, idx, val, self.cfg.kl_temperature, mask)
        else:
            h = _align(outputs.hidden_states[-1], rows, offsets, length)
            ref = torch.as_tensor(self.store.rows("hidden", ref_rows), device=dev)
            if self.cfg.loss == "tm":
                if self._tau is None or self._tau[0].device != h.device:
                    self._tau = tuple(t.to(h.device) for t in self.thresholds())
                aux = tm_loss(h, ref, *self._tau, mask=mask)
            elif self.cfg.loss == "l1":
                aux = l1_loss(h, ref, mask)
            else:
                aux = l2_loss(h, ref, mask)
        ce = None
        if self.cfg.weight == "dynamic":
            with torch.no_grad():
                tl, has_label = token_losses(_align(outputs.logits, rows, offsets, length),
                                             _align(batch["labels"], rows, offsets, length))
                ce = (tl * has_label).sum() / has_label.sum()  # token mean, as the loop's CE
        w = aux_weight(self.cfg.weight, ce, aux)
        self.last = {"aux": aux.detach(), "weight": w}
        return w * aux

    def state_dict(self) -> dict:
        return {"perm": self.perm.copy(), "pos": int(self.pos), "rng": self.rng.bit_generator.state,
                "cache_key": self.cache_key}

    def load_state_dict(self, d: dict) -> None:
        self.perm = np.asarray(d["perm"], dtype=np.int64)
        self.pos = int(d["pos"])
        self.rng.bit_generator.state = d["rng"]
        self._resumed_key = d.get("cache_key")
        self._check_resumed_key()
