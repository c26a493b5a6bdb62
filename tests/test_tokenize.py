import numpy as np
import pytest

from forgetless.config import DataConfig
from forgetless.data import Example, Task, TaskStream, load_stream
from forgetless.data.tokenize import encode, tokenize_stream
from forgetless.errors import InputError


def ids(tok, s):
    return tok(s, add_special_tokens=False)["input_ids"]


def test_encode_masks_prompt_and_appends_eos(tokenizer):
    p, t = ids(tokenizer, "first word: cat dog ->"), ids(tokenizer, " cat")
    x, y, cut = encode(tokenizer, "first word: cat dog ->", " cat", 64)
    eos = tokenizer.eos_token_id
    assert x.dtype == np.int64 and y.dtype == np.int64
    assert x.tolist() == p + t + [eos]
    assert y.tolist() == [-100] * len(p) + t + [eos]
    assert not cut


def test_encode_boundary_is_exact(tokenizer):
    # joint tokenization could merge across the boundary; separate tokenization must not
    x, y, _ = encode(tokenizer, "abc", "def", 64)
    n_p = len(ids(tokenizer, "abc"))
    assert (y[:n_p] == -100).all() and y[n_p:].tolist() == ids(tokenizer, "def") + [tokenizer.eos_token_id]


def test_prompt_cut_from_left(tokenizer):
    p, t = ids(tokenizer, "one two three four five six ->"), ids(tokenizer, " seven")
    n = len(t) + 1 + 3  # room for the last 3 prompt tokens
    x, y, cut = encode(tokenizer, "one two three four five six ->", " seven", n)
    assert cut and len(x) == n
    assert x.tolist() == p[-3:] + t + [tokenizer.eos_token_id]
    assert (y[:3] == -100).all() and (y[3:] != -100).all()


def test_exact_fit_is_not_truncated(tokenizer):
    p, t = ids(tokenizer, "a b c ->"), ids(tokenizer, " d")
    x, _, cut = encode(tokenizer, "a b c ->", " d", len(p) + len(t) + 1)
    assert not cut and len(x) == len(p) + len(t) + 1


def test_long_target_cut_at_end(tokenizer):
    t = ids(tokenizer, " one two three four five six seven eight")
    x, y, cut = encode(tokenizer, "q ->", " one two three four five six seven eight", 8)
    assert cut and x.tolist() == t[:8] and y.tolist() == t[:8]  # prompt and EOS gone


def test_no_target_token_survives(tokenizer):
    with pytest.raises(InputError):
        encode(tokenizer, "prompt ->", "", 16)  # nothing but EOS to learn
    with pytest.raises(InputError):
        encode(tokenizer, "prompt ->", " x", 1)


def test_tokenize_stream_ids_offsets_and_template(tokenizer):
    a = Task("a", "generation", [Example("p1 ->", " x"), Example("p2 ->", " y")], [Example("p3 ->", " z")])
    b = Task("b", "generation", [Example("q1 ->", " u")] * 3, [Example("q ->", " v")])
    s = tokenize_stream(TaskStream([a, b]), tokenizer, 64, template="Q: {prompt}")
    assert [[x.sample_id for x in ts] for ts in s.samples] == [[0, 1], [2, 3, 4]]
    assert [[x.task_id for x in ts] for ts in s.samples] == [[0, 0], [1, 1, 1]]
    x0, _, _ = encode(tokenizer, "Q: p1 ->", " x", 64)
    assert s.samples[0][0].input_ids.tolist() == x0.tolist()
    assert s.truncated == 0


def test_tokenize_stream_counts_truncation(tokenizer):
    a = Task("a", "generation", [Example("w " * 50 + "->", " x"), Example("short ->", " x")], [])
    s = tokenize_stream(TaskStream([a]), tokenizer, 10)
    assert s.truncated == 1 and max(x.n_tokens for x in s.samples[0]) == 10


def test_template_needs_placeholder(tokenizer):
    a = Task("a", "generation", [Example("p ->", " x")], [])
    with pytest.raises(InputError, match="prompt_template"):
        tokenize_stream(TaskStream([a]), tokenizer, 16, template="no placeholder")


def test_builtin_suite_is_short(tokenizer):
    """Prompts <= 40 tokens and targets <= 8 tokens keep training and greedy evaluation fast."""
    from forgetless.data.builtin import BUILTIN, REAL_SUITE

    s = load_stream(DataConfig(tasks=list(BUILTIN), n_train=200))
    for task in s.tasks:
        # the real-data suite holds real names (CLDR, ISO 3166-2), longer in the tiny tokenizer
        p_max, t_max = (56, 36) if task.name in REAL_SUITE else (40, 8)
        for ex in task.train + task.test:
            assert len(ids(tokenizer, ex.prompt)) <= p_max, (task.name, ex.prompt)
            for c in ex.choices or (ex.target,):
                assert 1 <= len(ids(tokenizer, c)) <= t_max, (task.name, c)
    s = tokenize_stream(s, tokenizer, 128)
    assert s.truncated == 0
    all_ids = [x.sample_id for ts in s.samples for x in ts]
    assert all_ids == list(range(len(all_ids)))
