"""GeRe's general samples: documents read from a file (or the bundled general texts), cut into
fixed-length token windows that every task replays."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from forgetless.data.task import Sample
from forgetless.errors import InputError

RNG_SALT = 0x6E5E  # keeps GeRe's random stream apart from other strategies' with the same seed


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
    order = np.random.default_rng([seed, RNG_SALT]).permutation(len(texts))
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
