"""GeRe's reference: what the frozen starting model (adapters off) computes on the general samples
(last-layer hidden states, top-k logits, their statistics), stored once on disk per model and sample
set (``cache_key``) and memory-mapped by every run that uses it."""

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

from forgetless.data.task import Sample
from forgetless.replay.gere.losses import RunningStats, reference_topk

CACHE_VERSION = 1


def _unwrap(model):
    return getattr(model, "module", model)  # DDP


def model_fingerprint(model) -> str:
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
