"""General English text: the tiny model's pretraining corpus, GeRe's replay pool and the
general-perplexity probe.

The text comes from what every Python install has offline (``pydoc_data.topics`` and the
docstrings of a fixed list of standard-library modules). Because that text differs between
Python versions, ``scripts/build_tiny_model.py`` writes the corpus it used into the package
(``assets/tiny/general_{train,heldout}.txt.gz``, one JSON string per line) and
``general_texts`` only ever reads those files, so every Python version sees the same text.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import inspect
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"
SPLITS = ("train", "heldout")

# Modules whose docstrings are mostly prose. Fixed so the corpus is reproducible; modules that
# fail to import on some platform are skipped.
STDLIB_MODULES = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "builtins", "bz2",
    "calendar", "cmath", "cmd", "codecs", "collections", "colorsys", "concurrent.futures",
    "configparser", "contextlib", "contextvars", "copy", "csv", "ctypes", "dataclasses",
    "datetime", "decimal", "difflib", "dis", "doctest", "email", "email.message", "enum",
    "filecmp", "fileinput", "fnmatch", "fractions", "ftplib", "functools", "gc", "getopt",
    "gettext", "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac", "html", "html.parser",
    "http", "http.client", "http.cookies", "http.server", "imaplib", "importlib", "inspect",
    "io", "ipaddress", "itertools", "json", "keyword", "linecache", "locale", "logging",
    "logging.handlers", "lzma", "mailbox", "math", "mimetypes", "multiprocessing", "netrc",
    "numbers", "operator", "optparse", "os", "os.path", "pathlib", "pdb", "pickle",
    "pickletools", "pkgutil", "platform", "plistlib", "poplib", "pprint", "profile",
    "pstats", "queue", "quopri", "random", "re", "reprlib", "sched", "secrets", "selectors",
    "shelve", "shlex", "shutil", "signal", "smtplib", "socket", "socketserver", "sqlite3",
    "ssl", "stat", "statistics", "string", "struct", "subprocess", "symtable", "sys",
    "sysconfig", "tarfile", "tempfile", "textwrap", "threading", "time", "timeit", "token",
    "tokenize", "trace", "traceback", "tracemalloc", "types", "typing", "unicodedata",
    "unittest", "unittest.mock", "urllib.parse", "urllib.request", "uuid", "warnings",
    "wave", "weakref", "webbrowser", "xml.dom.minidom", "xml.etree.ElementTree", "zipfile",
    "zipimport", "zlib", "zoneinfo",
    # submodules with long prose docstrings
    "asyncio.events", "asyncio.locks", "asyncio.queues", "asyncio.streams", "asyncio.tasks",
    "code", "codeop", "collections.abc", "compileall", "concurrent.futures.process",
    "concurrent.futures.thread", "email.feedparser", "email.header", "email.parser",
    "email.policy", "email.utils", "http.cookiejar", "importlib.abc", "importlib.metadata",
    "importlib.resources", "importlib.util", "json.decoder", "json.encoder", "logging.config",
    "modulefinder", "multiprocessing.managers", "multiprocessing.pool", "py_compile", "pydoc",
    "runpy", "site", "unittest.case", "unittest.loader", "unittest.result", "unittest.runner",
    "urllib.error", "urllib.robotparser", "xml.dom", "xml.sax", "xml.sax.handler",
    "xml.sax.saxutils", "xmlrpc.client", "xmlrpc.server",
)

HELDOUT_EVERY = 20  # ~5% of documents, chosen by a hash of their text
DOC_CHARS = 2000  # paragraphs are packed into documents of at most about this many characters

_RULE = re.compile(r"^\s*([*=\-~^\"'#+`])\1{2,}\s*$")


def _paragraphs(text: str) -> list[str]:
    """Split on blank lines; drop reST underline rules and trailing spaces."""
    lines = [ln.rstrip() for ln in text.expandtabs(4).splitlines() if not _RULE.match(ln)]
    paras = re.split(r"\n\s*\n", "\n".join(lines))
    return [p.strip("\n") for p in paras if p.strip()]


def _pack(paras: list[str], limit: int = DOC_CHARS) -> list[str]:
    """Greedy packing of consecutive paragraphs into documents (a long paragraph stays whole)."""
    docs, cur = [], []
    for p in paras:
        if cur and sum(len(x) + 2 for x in cur) + len(p) > limit:
            docs.append("\n\n".join(cur))
            cur = []
        cur.append(p)
    if cur:
        docs.append("\n\n".join(cur))
    return docs


def _module_docstrings(name: str) -> list[str]:
    try:
        mod = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a platform without the module just contributes nothing
        return []
    out = [inspect.getdoc(mod) or ""]
    for attr in sorted(vars(mod)):
        obj = vars(mod)[attr]
        if attr.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        if inspect.isclass(obj) or inspect.isroutine(obj):
            out.append(inspect.getdoc(obj) or "")
        if inspect.isclass(obj):
            for m in sorted(vars(obj)):
                f = vars(obj)[m]
                if not m.startswith("_") and inspect.isroutine(f):
                    out.append(inspect.getdoc(f) or "")
    return [d for d in out if len(d) >= 40]


def build_documents() -> list[str]:
    """All documents, from the running interpreter's stdlib (build time only)."""
    import pydoc_data.topics as topics

    docs: list[str] = []
    seen: set[str] = set()
    for key in sorted(topics.topics):
        docs += _pack(_paragraphs(topics.topics[key]))
    for name in STDLIB_MODULES:
        paras = []
        for d in _module_docstrings(name):
            if d not in seen:
                seen.add(d)
                paras += _paragraphs(d)
        docs += _pack(paras)
    uniq, out = set(), []
    for d in docs:
        if len(d) >= 200 and d not in uniq:  # very short leftovers make poor documents
            uniq.add(d)
            out.append(d)
    return out


def is_heldout(doc: str) -> bool:
    return int(hashlib.sha256(doc.encode("utf-8")).hexdigest(), 16) % HELDOUT_EVERY == 0


def split_documents(docs: list[str]) -> dict[str, list[str]]:
    return {"train": [d for d in docs if not is_heldout(d)], "heldout": [d for d in docs if is_heldout(d)]}


def corpus_path(split: str, directory: Path = ASSET_DIR) -> Path:
    return Path(directory) / f"general_{split}.txt.gz"


def write_corpus(splits: dict[str, list[str]], directory: Path = ASSET_DIR) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    for split, docs in splits.items():
        # mtime=0: identical bytes on every rebuild
        with open(corpus_path(split, directory), "wb") as raw, \
                gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
            f.write("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8"))


@lru_cache(maxsize=None)
def _read(split: str) -> tuple[str, ...]:
    with gzip.open(corpus_path(split), "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def general_texts(split: Literal["train", "heldout"] = "heldout") -> list[str]:
    """The shipped general documents of one split (the held-out split is never trained on)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return list(_read(split))


# the probe's question per form and kind of fact; {} is the country
PROBE_FORMS = {
    "qa": {"currency": "What is the currency of {}? Answer:",
           "language": "What is the main official language of {}? Answer:"},
    "cloze": {"currency": "The currency of {} is the", "language": "The main official language of {} is"},
}


def knowledge_probe(n: int | None = None, form: Literal["qa", "cloze"] = "qa") -> "Task":
    """General knowledge a pretrained model has and fine-tuning can erode, scored like a
    multiple-choice task: the main currency and the most spoken official language of each country
    in Unicode CLDR (``babel``), four options each, in English. No built-in task trains on these
    questions. ``n`` caps the questions (a fixed sample; default all, about 480). Like every test
    set it does not depend on the run's seed.

    ``form``: ``qa`` asks "What is the currency of X? Answer:", the format the built-in tasks
    train, so it also rewards learning that format; ``cloze`` scores the same facts and options
    as a sentence ("The currency of X is the"), which no task trains (benchmarks/probe_forms.py).
    Both forms draw the same questions, options and order."""
    if form not in PROBE_FORMS:
        raise ValueError(f"form must be 'qa' or 'cloze', got {form!r}")
    from babel import Locale
    from babel.core import get_global
    from babel.numbers import get_territory_currencies

    from forgetless.data.builtin._util import mc, rng_for
    from forgetless.data.task import Task

    en = Locale("en")
    rng = rng_for("knowledge_probe")
    facts: list[tuple[str, str, str]] = []  # (question, answer, kind)
    for code, country in sorted(en.territories.items()):
        if code.isdigit() or code in ("ZZ", "EU", "EZ", "UN", "QO", "XA", "XB"):
            continue
        cur = [c for c in get_territory_currencies(code) if c in en.currencies]
        if cur:
            facts.append((PROBE_FORMS[form]["currency"].format(country), en.currencies[cur[0]], "currency"))
        langs = [(v["population_percent"], k) for k, v in get_global("territory_languages").get(code, {}).items()
                 if v.get("official_status") in ("official", "de_facto_official") and k in en.languages]
        if langs:
            facts.append((PROBE_FORMS[form]["language"].format(country), en.languages[max(langs)[1]], "language"))
    # distractors drawn from the answers as often as they occur (Euro, English, Arabic ... are
    # frequent), so always picking a common answer does not pass the probe
    pools = {k: [a for _, a, kk in facts if kk == k] for k in ("currency", "language")}

    def distractors(a: str, k: str) -> list[str]:
        out: list[str] = []
        while len(out) < 3:
            x = pools[k][rng.randrange(len(pools[k]))]
            if x != a and x not in out:
                out.append(x)
        return out

    test = [mc(q, f" {a}", [f" {x}" for x in distractors(a, k)], rng) for q, a, k in facts]
    if n is not None and n < len(test):
        test = rng.sample(test, n)
    return Task("general_knowledge", "multiple_choice", [], test,
                source="babel: CLDR currencies and official languages of countries (4 options)")
