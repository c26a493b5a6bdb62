"""User task files: JSONL, JSON, CSV, Parquet, and Hugging Face datasets saved with
``save_to_disk`` (read with pyarrow, so ``datasets`` is not needed).

Accepted fields (after the ``fields`` renaming, ours -> the file's column):
- generation: ``prompt`` + ``target``, or Alpaca ``instruction`` + ``input`` + ``output``
  (prompt = instruction, plus "\\n" + input when input is non-empty);
- multiple choice: ``question`` (or ``prompt``) + ``choices`` (a list; in CSV a JSON list) +
  ``answer`` (the index, or the text of the right choice).
The kind is inferred from the first record (``choices`` present -> multiple choice) unless given.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator

from forgetless.config import TaskFileConfig
from forgetless.data.task import Example, Task, split_by_hash
from forgetless.errors import InputError, read_text

Record = tuple[int | None, dict]  # (1-based line for JSONL/CSV, else None; the record)


def read_jsonl(path: Path) -> Iterator[Record]:
    """(line, object) per non-blank line; InputError naming file and line on a bad one."""
    for i, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"malformed JSON ({e.msg})", file=str(path), line=i) from None
        if not isinstance(rec, dict):
            raise InputError("each line must be a JSON object", file=str(path), line=i)
        yield i, rec


def _json(path: Path) -> Iterator[Record]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON ({e.msg})", file=str(path), line=e.lineno) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise InputError("a JSON task file must hold a list of objects", file=str(path))
    for i, rec in enumerate(data, 1):
        if not isinstance(rec, dict):
            raise InputError(f"record {i} is not an object", file=str(path))
        yield None, rec


def _csv(path: Path) -> Iterator[Record]:
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    start = 2
    try:
        for rec in reader:
            if None in rec:  # more cells than header columns
                raise InputError(f"{len(rec[None])} more cell(s) than the header has columns", file=str(path),
                                 line=start)
            yield start, rec
            start = reader.line_num + 1
    except csv.Error as e:
        raise InputError(f"malformed CSV ({e})", file=str(path), line=reader.line_num) from None


def _table_records(table) -> Iterator[Record]:
    for rec in table.to_pylist():
        yield None, rec


def _parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise InputError(f"not a readable Parquet file ({e})", file=str(path)) from None
    return _table_records(table)


def _arrow_dir(path: Path):
    """One split saved by ``Dataset.save_to_disk``: the .arrow files are Arrow IPC streams."""
    import pyarrow as pa

    files = []
    state = path / "state.json"
    if state.is_file():
        meta = _json_file(state)
        entries = meta.get("_data_files", []) if isinstance(meta, dict) else None
        if not isinstance(entries, list) or not all(isinstance(f, dict) and isinstance(f.get("filename"), str)
                                                    for f in entries):
            raise InputError("'_data_files' must be a list of {filename: ...}", file=str(state))
        files = [path / f["filename"] for f in entries]
    if not files:
        files = sorted(path.glob("*.arrow"))
    if not files:
        raise InputError("no .arrow files (expected a dataset saved with save_to_disk)", file=str(path))
    tables = []
    for f in files:
        if not f.is_file():
            raise InputError("data file listed in state.json is missing", file=str(f))
        try:
            try:
                with pa.ipc.open_stream(f) as reader:
                    tables.append(reader.read_all())
            except pa.ArrowInvalid:
                with pa.ipc.open_file(f) as reader:
                    tables.append(reader.read_all())
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"not a readable Arrow file ({_first_line(e)})", file=str(f)) from None
    try:
        return pa.concat_tables(tables)
    except pa.ArrowException as e:
        raise InputError(f"the .arrow files do not share one schema ({_first_line(e)})", file=str(path)) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _json_file(path: Path):
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON ({e.msg})", file=str(path), line=e.lineno) from None


def read_splits(path: str | Path) -> dict[str, list[Record]]:
    """The records of a file, by split. Plain files have one split, ``"all"``; a saved
    DatasetDict has its own split names."""
    p = Path(path)
    if not p.exists():
        raise InputError("task file not found", file=str(p))
    if p.is_dir():
        dd = p / "dataset_dict.json"
        if dd.is_file():
            meta = _json_file(dd)
            splits = meta.get("splits", []) if isinstance(meta, dict) else None
            if not isinstance(splits, list) or not all(isinstance(x, str) and x and "/" not in x for x in splits):
                raise InputError("'splits' must be a list of split names", file=str(dd))
            return {s: list(_table_records(_arrow_dir(p / s))) for s in splits}
        return {"all": list(_table_records(_arrow_dir(p)))}
    suffix = p.suffix.lower()
    readers = {".jsonl": read_jsonl, ".ndjson": read_jsonl, ".json": _json, ".csv": _csv,
               ".parquet": _parquet, ".pq": _parquet}
    if suffix not in readers:
        raise InputError(f"unknown task file type {suffix!r}; use one of {', '.join(readers)} "
                         "or a directory saved with save_to_disk", file=str(p))
    return {"all": list(readers[suffix](p))}


def check_fields(records: list[Record], fields: dict[str, str], file: str) -> None:
    """A ``fields`` entry naming a column the file does not have is a typo, not a no-op."""
    if not records or not fields:
        return
    columns = set().union(*(rec.keys() for _, rec in records))
    for ours, theirs in fields.items():
        if theirs not in columns:
            raise InputError(f"column {theirs!r} is not in the file (columns: {column_names(columns)})",
                             file=file, field=f"fields.{ours}")


def column_names(columns, most: int = 8, width: int = 16) -> str:
    """Column names for an error, each cut to ``width`` characters and at most ``most`` of them:
    a file that is not a table (a CSV header that is really a line of data) is not echoed."""
    names = sorted(map(str, columns))
    shown = [repr(c if len(c) <= width else c[:width] + "...") for c in names[:most]]
    return ", ".join(shown) + (f" and {len(names) - most} more" if len(names) > most else "")


def _rename(rec: dict, fields: dict[str, str]) -> dict:
    if not fields:
        return rec
    out = dict(rec)
    for ours, theirs in fields.items():
        if theirs in rec:
            out[ours] = rec[theirs]
    return out


def infer_kind(rec: dict) -> str:
    return "multiple_choice" if "choices" in rec else "generation"


def _text(rec: dict, key: str, err) -> str:
    if key not in rec or rec[key] is None:
        raise err("missing field", key)
    v = rec[key]
    if not isinstance(v, str):  # a number (or NaN from a spreadsheet) is not silently made text
        hint = " (quote it in the file)" if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
        raise err(f"must be a string, got {type(v).__name__} {v!r}{hint}", key)
    return v


def to_example(rec: dict, kind: str, file: str, line: int | None, index: int) -> Example:
    """One record -> Example, with an error naming file, line (or record) and field."""
    def err(msg: str, field: str) -> InputError:  # ``index`` is 1-based, like line numbers
        return InputError(msg if line is not None else f"record {index}: {msg}", file=file, line=line, field=field)

    if kind == "multiple_choice":
        qkey = "question" if "question" in rec else "prompt"
        if qkey not in rec:
            raise err("missing field", "question")
        prompt = rec[qkey]
        if not isinstance(prompt, str):
            raise err(f"must be a string, got {type(prompt).__name__}", qkey)
        if "choices" not in rec or rec["choices"] is None:
            raise err("missing field", "choices")
        choices = rec["choices"]
        if isinstance(choices, str):  # CSV: a JSON list in a cell
            try:
                choices = json.loads(choices)
            except json.JSONDecodeError:
                raise err("must be a list (in CSV: a JSON list)", "choices") from None
        if not isinstance(choices, (list, tuple)):
            raise err(f"must be a list, got {type(choices).__name__}", "choices")
        if len(choices) < 2:
            raise err(f"needs at least 2 choices, got {len(choices)}", "choices")
        bad = [c for c in choices if not isinstance(c, str) or c == ""]
        if bad:
            raise err(f"every choice must be a non-empty string, got {bad[0]!r}", "choices")
        dup = next((c for i, c in enumerate(choices) if c in choices[:i]), None)
        if dup is not None:
            raise err(f"duplicate choice {dup!r}", "choices")
        choices = tuple(choices)
        if "answer" not in rec or rec["answer"] is None:
            raise err("missing field", "answer")
        ans: Any = rec["answer"]
        if isinstance(ans, str) and ans not in choices:
            if ans.strip().lstrip("-").isdigit():
                ans = int(ans)
            else:
                raise err(f"answer text {ans!r} is not among the choices", "answer")
        if isinstance(ans, str):
            ans = choices.index(ans)
        elif isinstance(ans, bool) or not isinstance(ans, int):
            raise err(f"must be an index or the text of a choice, got {type(ans).__name__}", "answer")
        if not 0 <= ans < len(choices):
            raise err(f"answer index {ans} out of range for {len(choices)} choices", "answer")
        return Example(prompt=prompt, target=choices[ans], choices=choices, answer=ans)

    if "prompt" in rec:
        prompt = rec["prompt"]
        if not isinstance(prompt, str):
            raise err(f"must be a string, got {type(prompt).__name__}", "prompt")
        target = _text(rec, "target" if "target" in rec or "output" not in rec else "output", err)
    elif "instruction" in rec:
        instr = rec["instruction"]
        if not isinstance(instr, str):
            raise err(f"must be a string, got {type(instr).__name__}", "instruction")
        extra = rec.get("input") or ""
        if not isinstance(extra, str):
            raise err(f"must be a string, got {type(extra).__name__}", "input")
        prompt = instr + ("\n" + extra if extra else "")
        target = _text(rec, "output", err)
    else:
        raise err("missing field (or 'instruction' for Alpaca-style files)", "prompt")
    if target == "":
        raise err("empty target", "target")
    return Example(prompt=prompt, target=target)


def _examples(records: list[Record], kind: str, file: str, fields: dict[str, str]) -> list[Example]:
    check_fields(records, fields, file)
    return [to_example(_rename(rec, fields), kind, file, line, i) for i, (line, rec) in enumerate(records, 1)]


def _counts(n: int, dev_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_dev, n_test) carved from ``n`` records; at least one test example (when ``test_fraction``
    > 0) and one training example stay."""
    n_test = min(n - 1, max(1, round(n * test_fraction))) if test_fraction else 0
    return min(n - 1 - n_test, round(n * dev_fraction)), n_test


def load_task_file(cfg: TaskFileConfig) -> Task:
    """A user task. Splits come from the file when it has them (a saved DatasetDict's ``train``,
    ``validation``, ``test``; ``test_path``); the missing ones are carved from the training records
    by hash (data.task.split_by_hash): ``test_fraction`` to test, ``dev_fraction`` to dev."""
    path = Path(cfg.path)
    file = str(path)
    splits = read_splits(path)
    files = {"train": file, "dev": file, "test": file}
    given: dict[str, list[Record]] = {}  # the splits the file has, by our names
    if "all" in splits:
        records = splits["all"]
    else:
        if "train" not in splits:
            raise InputError(f"no 'train' split (the dataset has: {', '.join(splits) or 'none'})",
                             file=str(path / "dataset_dict.json"), field="splits")
        records = splits["train"]
        files["train"] = str(path / "train")
        test_name = next((s for s in ("test", "validation") if s in splits), None)
        for ours, theirs in (("test", test_name), ("dev", "validation" if test_name == "test" else None)):
            if theirs in splits:
                given[ours], files[ours] = splits[theirs], str(path / theirs)
    if not records:
        raise InputError("empty task: no examples", file=files["train"])
    kind = cfg.kind or infer_kind(_rename(records[0][1], cfg.fields))
    train = _examples(records, kind, files["train"], cfg.fields)
    if cfg.test_path is not None:
        tsplits = read_splits(cfg.test_path)
        given["test"] = tsplits.get("test") or tsplits.get("all") or next(iter(tsplits.values()), [])
        files["test"] = cfg.test_path
        if not given["test"]:
            raise InputError("empty test file: no examples", file=cfg.test_path)
    if "test" not in given and len(train) < 2:
        raise InputError("need at least 2 examples to split off a test set (or give test_path)", file=file)
    n_dev, n_test = _counts(len(train), 0 if "dev" in given else cfg.dev_fraction,
                            0 if "test" in given else cfg.test_fraction)
    train, dev, test = split_by_hash(train, n_dev, n_test)
    if "dev" in given:
        dev = _examples(given["dev"], kind, files["dev"], cfg.fields)
    if "test" in given:
        test = _examples(given["test"], kind, files["test"], cfg.fields)
    name = cfg.name or (path.name if path.is_dir() else path.stem)
    return Task(name=name, kind=kind, train=train, test=test, dev=dev, source=file, metric=cfg.metric, files=files)
