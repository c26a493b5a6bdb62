"""Per-task metrics against hand-computed values; ROUGE-L against rouge-score itself."""

import pytest

from forgetless import metrics
from forgetless.scoring import edit_similarity, exact_match, metric_for, rouge_l, score_texts, squad_normalize, token_f1


def test_exact_match_uses_the_answer_normalisation():
    assert exact_match("  Paris. ", "paris") == 1.0
    assert exact_match("Paris France", "paris") == 0.0


def test_squad_normalisation():
    assert squad_normalize("The  Cat, sat on a MAT!") == "cat sat on mat"


def test_token_f1_hand_computed():
    # pred tokens [cat, sat], ref tokens [cat, sat, on, mat] after normalisation: P = 1, R = 1/2
    assert token_f1("The cat sat", "a cat sat on the mat") == pytest.approx(2 * 1 * 0.5 / 1.5)
    # repeated tokens count by multiplicity: pred [a1, a1, b], ref [a1, b, c]: common 2, P = R = 2/3
    assert token_f1("a1 a1 b", "a1 b c") == pytest.approx(2 / 3)
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("the", "cat") == 0.0  # 'the' normalises to nothing


def test_rouge_l_equals_rouge_score_package():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pairs = [("the cat sat on the mat", "the cat is on the mat"),
             ("police killed the gunman", "the gunman was shot down by police"),
             ("completely different", "nothing in common here"),
             ("running runs", "run ran")]
    for pred, ref in pairs:
        assert rouge_l(pred, ref) == pytest.approx(scorer.score(ref, pred)["rougeL"].fmeasure)
    # hand check: LCS of [the cat sat on the mat] and [the cat is on the mat] is 5 tokens: P = R = 5/6
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)


def test_edit_similarity_hand_computed():
    assert edit_similarity("abcd", "abce") == pytest.approx(2 * 3 / 8)
    assert edit_similarity("abc", "abc") == 1.0
    assert edit_similarity("abc", "xyz") == 0.0
    assert edit_similarity("", "") == 1.0


def test_metric_for_defaults_and_kind_checks():
    assert metric_for("generation", None) == "exact_match"
    assert metric_for("multiple_choice", None) == "accuracy"
    assert metric_for("generation", "rouge_l") == "rouge_l"
    with pytest.raises(ValueError, match="does not apply"):
        metric_for("multiple_choice", "f1")
    with pytest.raises(ValueError, match="does not apply"):
        metric_for("generation", "accuracy")
    assert score_texts("f1", ["a b", "c"], ["a b", "d"]) == [1.0, 0.0]
    # several acceptable answers: the best one counts
    assert score_texts("f1", ["x y"], [("q", "x z", "x y")]) == [1.0]
    assert score_texts("f1", ["x y"], [("q", "x z")]) == [pytest.approx(0.5)]


def test_normalized_score_by_diagonal_and_by_joint():
    acc = [[0.8, 0.1, 0.0],
           [0.4, 0.5, 0.2],
           [0.6, 0.25, 0.0]]
    r = metrics.normalized_score(acc)  # reference: the diagonal 0.8, 0.5, 0.0 (task 2 left out)
    assert r["per_task"] == [pytest.approx(0.75), pytest.approx(0.5), None]
    assert r["value"] == pytest.approx((0.75 + 0.5) / 2) and r["excluded"] == [2]
    j = metrics.normalized_score(acc, reference=[0.6, 0.5, 0.4])  # e.g. a joint run's final row
    assert j["value"] == pytest.approx((1.0 + 0.5 + 0.0) / 3) and j["excluded"] == []
    assert metrics.normalized_score([[0.0]])["value"] is None


def test_report_reads_results_written_before_per_task_metrics():
    from forgetless.report import report_md

    old = {"name": "old", "strategy": "none", "model": "tiny", "seed": 0, "tasks": ["a", "b"],
           "task_kinds": ["generation", "multiple_choice"], "acc": [[1.0, 0.0], [0.5, 1.0]],
           "baseline_acc": [0.0, 0.0], "metrics": metrics.compute([[1.0, 0.0], [0.5, 1.0]]),
           "general_ppl": [10.0, 12.0], "counters": {}, "replay_events": []}
    md = report_md(old)
    assert "a exact_match, b accuracy" in md and "| 0.500 | 1.000 |" in md


def test_evaluate_task_scores_generations_with_the_task_metric(tokenizer):
    from test_evaluate import chain_model, ids

    from forgetless.data.task import Example, Task
    from forgetless.evaluate import evaluate_task

    model = chain_model(len(tokenizer), ids(tokenizer, " the return value"), tokenizer.eos_token_id)
    tests = [Example("a:", "the return value"), Example("b:", "return the value now")]
    # the model always answers "the return value"
    em = evaluate_task(model, tokenizer, Task("t", "generation", [], tests))
    assert em.metric == "exact_match" and em.score == pytest.approx(0.5)
    f1 = evaluate_task(model, tokenizer, Task("t", "generation", [], tests, metric="f1"))
    # second: pred tokens [return, value], ref [return, value, now] -> P = 1, R = 2/3, F1 = 0.8
    assert f1.metric == "f1" and f1.score == pytest.approx((1.0 + 0.8) / 2)
    rl = evaluate_task(model, tokenizer, Task("t", "generation", [], tests), metric="rouge_l")
    assert rl.score == pytest.approx((1.0 + rouge_l("the return value", "return the value now")) / 2)
    ref = evaluate_task(model, tokenizer, Task("t", "generation", [], [Example("c:", "nope", references=("the return value",))]))
    assert ref.score == 1.0  # another acceptable answer matched
    with pytest.raises(ValueError, match="does not apply"):
        evaluate_task(model, tokenizer, Task("t", "generation", [], tests), metric="accuracy")
