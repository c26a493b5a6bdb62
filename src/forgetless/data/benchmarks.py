"""Standard continual-learning streams read from local copies of their public data.

Each preset knows its published folder layout, prompt shape, label sets, metric per task and task
orders; it reads only files (forgetless never downloads). Layouts, sources and orders:
``docs/benchmarks.md``.

- ``cl5``, ``cl4``, ``long15``: O-LoRA's ``CL_Benchmark`` (github.com/cmnfriend/O-LoRA):
  ``<dir>/<group>/<dataset>/{train,dev,test}.json`` (lists of ``{"sentence", "label"}``) and
  ``labels.json`` (the option list). Prompt as O-LoRA builds it (``--add_task_name
  --add_dataset_name``): ``Task:<group>\\nDataset:<dataset>\\n<instruction>Option: <labels> \\n
  <sentence>\\nAnswer:``. Tasks are multiple choice over the labels, scored by accuracy.
- ``trace``: TRACE's ``LLM-CL-Benchmark`` (github.com/BeyonderXX/TRACE):
  ``<dir>/<task>/{train,eval,test}.json``, lists of ``{"prompt", "answer"}``; generation.
- ``superni15``: the 15 Super-NaturalInstructions tasks of SAPT (github.com/circle-hit/SAPT):
  ``<dir>/<task>/{train,dev,test}.json``, each a SuperNI task JSON (``Definition``,
  ``Instances`` of ``{"id", "input", "output": [...]}``); generation scored by ROUGE-L, the best
  over an instance's outputs (trained on the first).

Every preset task is tested on its published test file (``dev.json`` / ``eval.json`` where a
release has no ``test.json``); its dev split is carved from its training file by hash
(``data.task.split_by_hash``), so it never shares an example with test and never moves with the
seed. Records are strict: a field that is null, a number or missing is an error naming the file,
the record (from 1) and the field.
"""

from __future__ import annotations

import json
from pathlib import Path

from forgetless.config import DEV_FRACTION
from forgetless.data.task import Example, Task, split_by_hash
from forgetless.errors import InputError

OLORA_URL = "https://github.com/cmnfriend/O-LoRA (folder CL_Benchmark)"
TRACE_URL = "https://github.com/BeyonderXX/TRACE (LLM-CL-Benchmark release)"
SUPERNI_URL = "https://github.com/circle-hit/SAPT (folder CL_Benchmark/SuperNI)"

# dataset -> (group folder, dataset folder) in CL_Benchmark
OLORA_DATASETS: dict[str, tuple[str, str]] = {
    "agnews": ("TC", "agnews"), "dbpedia": ("TC", "dbpedia"), "yahoo": ("TC", "yahoo"),
    "amazon": ("SC", "amazon"), "yelp": ("SC", "yelp"), "imdb": ("SC", "IMDB"), "sst-2": ("SC", "SST-2"),
    "mnli": ("NLI", "MNLI"), "cb": ("NLI", "CB"), "rte": ("NLI", "RTE"), "qqp": ("QQP", "QQP"),
    "boolqa": ("BoolQA", "BoolQA"), "multirc": ("MultiRC", "MultiRC"), "wic": ("WiC", "WiC"),
    "copa": ("COPA", "COPA"),
}
# O-LoRA's configs/instruction_config.json (COPA has none: its sentence carries the options)
OLORA_INSTRUCTIONS: dict[str, str] = {
    "NLI": 'What is the logical relationship between the "sentence 1" and the "sentence 2"? Choose one from the option.\n',
    "QQP": 'Whether the "first sentence" and the "second sentence" have the same meaning? Choose one from the option.\n',
    "SC": "What is the sentiment of the following paragraph? Choose one from the option.\n",
    "TC": "What is the topic of the following paragraph? Choose one from the option.\n",
    "BoolQA": "According to the following passage, is the question true or false? Choose one from the option.\n",
    "MultiRC": "According to the following passage and question, is the candidate answer true or false? Choose one from the option.\n",
    "WiC": "Given a word and two sentences, whether the word is used with the same sense in both sentence? Choose one from the option.\n",
}

TRACE_METRICS: dict[str, str] = {  # TRACE's per-task metrics; SARI (20Minuten) is not implemented: ROUGE-L
    "C-STANCE": "exact_match", "FOMC": "exact_match", "MeetingBank": "rouge_l", "Py150": "edit_similarity",
    "ScienceQA": "exact_match", "NumGLUE-cm": "exact_match", "NumGLUE-ds": "exact_match", "20Minuten": "rouge_l",
}

_SUPERNI_1 = [
    "task1572_samsum_summary", "task363_sst2_polarity_classification", "task1290_xsum_summarization",
    "task181_outcome_extraction", "task002_quoref_answer_generation", "task1510_evalution_relation_extraction",
    "task639_multi_woz_user_utterance_generation", "task1729_personachat_generate_next",
    "task073_commonsenseqa_answer_generation", "task1590_diplomacy_text_generation",
    "task748_glucose_reverse_cause_event_detection", "task511_reddit_tifu_long_text_summarization",
    "task591_sciq_answer_generation", "task1687_sentiment140_classification", "task875_emotion_classification",
]
_SUPERNI_2 = [
    "task748_glucose_reverse_cause_event_detection", "task073_commonsenseqa_answer_generation",
    "task1590_diplomacy_text_generation", "task639_multi_woz_user_utterance_generation",
    "task1572_samsum_summary", "task1687_sentiment140_classification", "task591_sciq_answer_generation",
    "task363_sst2_polarity_classification", "task1510_evalution_relation_extraction",
    "task1729_personachat_generate_next", "task181_outcome_extraction",
    "task511_reddit_tifu_long_text_summarization", "task002_quoref_answer_generation",
    "task1290_xsum_summarization", "task875_emotion_classification",
]

# preset -> order number -> task names in training order
ORDERS: dict[str, dict[int, list[str]]] = {
    "cl5": {  # MbPA++ (de Masson d'Autume et al. 2019) / LAMOL
        1: ["yelp", "agnews", "dbpedia", "amazon", "yahoo"],
        2: ["dbpedia", "yahoo", "agnews", "amazon", "yelp"],
        3: ["yelp", "yahoo", "amazon", "dbpedia", "agnews"],
        4: ["agnews", "yelp", "amazon", "yahoo", "dbpedia"],
    },
    "cl4": {  # O-LoRA orders 1-3
        1: ["dbpedia", "amazon", "yahoo", "agnews"],
        2: ["dbpedia", "amazon", "agnews", "yahoo"],
        3: ["yahoo", "amazon", "agnews", "dbpedia"],
    },
    "long15": {  # Progressive Prompts / O-LoRA orders 4-6
        4: ["mnli", "cb", "wic", "copa", "qqp", "boolqa", "rte", "imdb", "yelp", "amazon", "sst-2",
            "dbpedia", "agnews", "multirc", "yahoo"],
        5: ["multirc", "boolqa", "wic", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst-2", "dbpedia",
            "agnews", "yelp", "amazon", "yahoo"],
        6: ["yelp", "amazon", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst-2", "dbpedia", "agnews",
            "yahoo", "multirc", "boolqa", "wic"],
    },
    "trace": {1: list(TRACE_METRICS)},  # the TRACE paper's order
    "superni15": {1: _SUPERNI_1, 2: _SUPERNI_2},  # SAPT's orders 1 and 2
}


def _read_json(path: Path, hint: str):
    if not path.is_file():
        raise InputError(f"not found; expected {hint}; forgetless never downloads", file=str(path))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON ({e.msg})", file=str(path), line=e.lineno) from None


def _string(value, path: Path, i: int, field: str, what: str = "record") -> str:
    """A text field of record ``i`` (1-based): a string, never a null or a number made into one."""
    if not isinstance(value, str):
        raise InputError(f"{what} {i}: must be a string, got {type(value).__name__} {value!r}", file=str(path),
                         field=field)
    return value


def _records(path: Path, hint: str, keys: tuple[str, ...]) -> list[dict]:
    """The records of a preset file; every one of ``keys`` present and a string."""
    data = _read_json(path, hint)
    if not isinstance(data, list):
        raise InputError("must hold a JSON list of records", file=str(path))
    for i, rec in enumerate(data, 1):
        if not isinstance(rec, dict):
            raise InputError(f"record {i}: must be an object, got {type(rec).__name__}", file=str(path))
        for k in keys:
            if k not in rec:
                raise InputError(f"record {i}: missing field", file=str(path), field=k)
            _string(rec[k], path, i, k)
    return data


def _task(name: str, kind: str, folder: Path, examples, test_names: tuple[str, ...], metric: str) -> Task:
    """A preset task: train.json, the first of ``test_names`` present as test (the first named when
    none is: its reader reports it), and dev carved from train by hash."""
    train_file = folder / "train.json"
    test_file = next((folder / n for n in test_names if (folder / n).is_file()), folder / test_names[0])
    train = examples(train_file)
    n_dev = round(len(train) * DEV_FRACTION)
    train, dev, _ = split_by_hash(train, min(n_dev, max(len(train) - 1, 0)), 0)
    return Task(name=name, kind=kind, train=train, test=examples(test_file), dev=dev, source=str(folder),
                metric=metric, files={"train": str(train_file), "dev": str(train_file), "test": str(test_file)})


def _olora_task(root: Path, name: str) -> Task:
    group, ds = OLORA_DATASETS[name]
    folder = root / group / ds
    hint = f"O-LoRA's CL_Benchmark layout <dir>/{group}/{ds}/{{train,test}}.json + labels.json, from {OLORA_URL}"
    labels = _read_json(folder / "labels.json", hint)
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise InputError("must be a JSON list of label strings", file=str(folder / "labels.json"))
    dup = next((x for i, x in enumerate(labels) if x in labels[:i]), None)
    if dup is not None:
        raise InputError(f"duplicate label {dup!r}", file=str(folder / "labels.json"))
    head = f"Task:{group}\nDataset:{ds}\n"
    if group == "COPA":
        template = head + "{0}\nAnswer:"
    else:
        template = head + OLORA_INSTRUCTIONS[group] + "Option: " + ", ".join(labels) + " \n{0}\nAnswer:"
    choices = tuple(labels)

    def examples(path: Path) -> list[Example]:
        records = _records(path, hint, ("sentence", "label"))
        out = [Example(prompt=template.format(rec["sentence"]), target=rec["label"], choices=choices,
                       answer=choices.index(rec["label"]))
               for rec in records if rec["label"] in choices]  # MNLI has a few '-' records outside labels.json
        if records and not out:
            raise InputError(f"none of its {len(records)} records has a label listed in labels.json", file=str(path),
                             field="label")
        return out

    return _task(name, "multiple_choice", folder, examples, ("test.json", "dev.json"), "accuracy")


def _trace_task(root: Path, name: str) -> Task:
    folder = root / name
    hint = f"TRACE's layout <dir>/{name}/{{train,test}}.json of {{prompt, answer}} records, from {TRACE_URL}"

    def examples(path: Path) -> list[Example]:
        return [Example(prompt=r["prompt"], target=r["answer"]) for r in _records(path, hint, ("prompt", "answer"))]

    return _task(name, "generation", folder, examples, ("test.json", "eval.json"), TRACE_METRICS[name])


def _superni_task(root: Path, name: str) -> Task:
    folder = root / name
    hint = f"SuperNI task JSON files <dir>/{name}/{{train,test}}.json, from {SUPERNI_URL}"

    def examples(path: Path) -> list[Example]:
        data = _read_json(path, hint)
        if not isinstance(data, dict) or not isinstance(data.get("Instances"), list):
            raise InputError("not a SuperNI task (needs 'Definition' and 'Instances')", file=str(path), field="Instances")
        definition = data.get("Definition") or [""]
        definition = definition[0] if isinstance(definition, list) else str(definition)
        out = []
        for i, inst in enumerate(data["Instances"], 1):
            outputs = inst.get("output") if isinstance(inst, dict) else None
            if not isinstance(outputs, list) or not outputs or "input" not in inst:
                raise InputError(f"instance {i}: needs 'input' and a non-empty 'output' list", file=str(path),
                                 field="Instances")
            text = _string(inst["input"], path, i, "input", "instance")
            # SuperNI's own encoding (Wang et al. 2022): definition, then the instance
            prompt = (f"Definition: {definition.strip()}\n\nNow complete the following example -\n"
                      f"Input: {text.strip()}\nOutput: ")
            refs = tuple(_string(o, path, i, "output", "instance").strip() for o in outputs)
            out.append(Example(prompt=prompt, target=refs[0], references=refs[1:]))
        return out

    return _task(name, "generation", folder, examples, ("test.json", "dev.json"), "rouge_l")


_LOADERS = {"cl5": _olora_task, "cl4": _olora_task, "long15": _olora_task, "trace": _trace_task,
            "superni15": _superni_task}


def benchmark_tasks(benchmark: str, order: int) -> list[str]:
    orders = ORDERS[benchmark]
    if order not in orders:
        raise InputError(f"{benchmark} has orders {sorted(orders)}, got {order}", field="data.benchmark_order")
    return orders[order]


def load_benchmark(benchmark: str, directory: str | None, order: int) -> list[Task]:
    """The tasks of ``benchmark`` in its order number ``order``, read from ``directory``."""
    names = benchmark_tasks(benchmark, order)
    if directory is None:
        raise InputError(f"data.benchmark={benchmark} needs the folder of its data", field="data.benchmark_dir")
    root = Path(directory)
    if not root.is_dir():
        where = {"trace": TRACE_URL, "superni15": SUPERNI_URL}.get(benchmark, OLORA_URL)
        raise InputError(f"benchmark folder not found (data.benchmark={benchmark} expects e.g. "
                         f"{_expected_file(benchmark, names[0])} inside it; public data: {where}; "
                         f"forgetless never downloads)", file=str(root))
    return [_LOADERS[benchmark](root, n) for n in names]


def _expected_file(benchmark: str, name: str) -> str:
    if benchmark in ("cl5", "cl4", "long15"):
        group, ds = OLORA_DATASETS[name]
        return f"{group}/{ds}/train.json"
    return f"{name}/train.json"
