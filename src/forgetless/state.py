"""Save nested strategy/loop state without pickle: arrays to .npz, everything else to JSON."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

_ARRAY = "__array__"


def _split(obj: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    if isinstance(obj, np.ndarray):
        key = path or "root"
        arrays[key] = obj
        return {_ARRAY: key}
    if isinstance(obj, dict):
        return {str(k): _split(v, arrays, f"{path}.{k}" if path else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split(v, arrays, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _join(obj: Any, arrays) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY}:
            return np.array(arrays[obj[_ARRAY]])
        return {k: _join(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, arrays) for v in obj]
    return obj


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are for people to read
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_state(state: dict, directory: Path, stem: str = "state") -> None:
    """Write ``<stem>.json`` and ``<stem>.npz`` (atomically, each)."""
    import io

    arrays: dict[str, np.ndarray] = {}
    meta = _split(state, arrays, "")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(Path(directory) / f"{stem}.npz", buf.getvalue())
    atomic_write_text(Path(directory) / f"{stem}.json", json.dumps(meta))


def load_state(directory: Path, stem: str = "state") -> dict:
    meta = json.loads((Path(directory) / f"{stem}.json").read_text())
    with np.load(Path(directory) / f"{stem}.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return _join(meta, arrays)
