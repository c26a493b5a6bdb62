"""Tokenization with prompt masking.

A sample is ``[BOS] + prompt tokens + target tokens + END``; labels are -100 on BOS and the
prompt. Prompt and target are tokenized separately (no special tokens) and concatenated, so the
prompt/target boundary is exact whatever the tokenizer merges across it. :func:`special_tokens`
is the one place that decides the special tokens, for training, evaluation, GeRe and the
Trainer integration alike: BOS when the tokenizer adds one itself (``tokenizer("x")`` starts
with it: Llama, Gemma; not Qwen, SmolLM2), END = EOS, or in chat mode the end-of-turn token the
chat template closes an assistant turn with (``<|eot_id|>``, ``<end_of_turn>``, ``<|im_end|>``,
``<|end|>``).

With a chat template (``data.chat_template``) the prompt is rendered as the user turn followed by
the assistant header (``add_generation_prompt``), and the target, without its leading
whitespace, is the assistant turn ended by the end-of-turn token: the loss falls on the
assistant turn only. A template that writes BOS itself gives it once. Evaluation renders prompts
and answers with the same functions, so train and test see one format.

Truncation to ``max_length``: BOS and the whole target + END are kept and the prompt is cut from
the LEFT (its end, next to the answer, matters most). If target + END alone exceed the room, the
prompt is dropped and the target's end is cut. Either cut marks the sample truncated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forgetless.config import check_prompt_template
from forgetless.data.task import Sample, TaskStream
from forgetless.errors import InputError

IGNORE = -100


def _eos(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise InputError("the tokenizer has no EOS token", field="model.name")
    return int(eos)


@dataclass(frozen=True)
class SpecialTokens:
    bos: int | None  # put before every sequence (None: the tokenizer adds none)
    end: int  # closes a target: EOS, or in chat mode the template's end-of-turn token
    stop: tuple[int, ...]  # tokens that end a generation: END and EOS


def bos_token(tokenizer) -> int | None:
    """BOS when the tokenizer puts one in front of a text itself (``tokenizer("x")``), else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("x")["input_ids"]
    return int(bos) if len(ids) > 0 and ids[0] == bos else None


_TURN_MARK = "forgetless-answer-mark"


def _end_of_turn(tokenizer) -> int | None:
    """The special token right after an assistant message in the chat template's rendering."""
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "q"},
                                              {"role": "assistant", "content": _TURN_MARK}], tokenize=False)
    except (TemplateError, ValueError, TypeError):
        return None
    if _TURN_MARK not in text:
        return None
    after = tokenizer(text[text.rindex(_TURN_MARK) + len(_TURN_MARK):], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return int(after[0]) if len(after) > 0 and after[0] in special else None


def special_tokens(tokenizer, chat: bool = False) -> SpecialTokens:
    """BOS, the end of a target and the stop tokens of generation, as this model was trained."""
    eos = _eos(tokenizer)
    end = _end_of_turn(tokenizer) if chat else None
    end = eos if end is None else end
    return SpecialTokens(bos_token(tokenizer), end, tuple(dict.fromkeys((end, eos))))


def with_bos(ids: list[int], bos: int | None, keep: int | None = None) -> list[int]:
    """``ids`` behind one BOS (none added when a template already wrote it), cut from the LEFT to
    at most ``keep`` tokens in all; BOS is never cut."""
    ids = list(ids)
    head = [] if bos is None else [bos]
    if head and ids[:1] == head:
        ids = ids[1:]
    if keep is not None and len(head) + len(ids) > keep:
        if keep <= len(head):
            raise ValueError(f"max_length leaves no room for the prompt (keep={keep})")
        ids = ids[len(ids) - (keep - len(head)):]
    return head + ids


def _assemble(p: list[int], t: list[int], sp: SpecialTokens, max_length: int) -> tuple[np.ndarray, np.ndarray, bool]:
    if not t:
        raise InputError("the target is empty after tokenization", field="target")
    head = with_bos([], sp.bos)
    p = with_bos(p, sp.bos)[len(head):]  # a BOS the chat template wrote goes back in front once
    room = max_length - len(head)
    t = list(t) + [sp.end]
    truncated = False
    if len(t) >= room:
        truncated = bool(p) or len(t) > room
        p, t = [], t[:max(room, 0)]
    elif len(p) + len(t) > room:
        p, truncated = p[len(p) + len(t) - room:], True
    if len(head) + len(p) + len(t) < 2 or not t:  # position 0 has no context: its label is never trained
        raise InputError(f"no target token survives truncation to max_length={max_length}", field="max_length")
    ids = np.asarray(head + p + t, dtype=np.int64)
    labels = np.asarray([IGNORE] * (len(head) + len(p)) + t, dtype=np.int64)
    return ids, labels, truncated


def encode(tokenizer, prompt: str, target: str, max_length: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(input_ids, labels, truncated) for one prompt/target pair, without a chat template."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    t = tokenizer(target, add_special_tokens=False)["input_ids"]
    return _assemble(p, t, special_tokens(tokenizer), max_length)


def apply_template(template: str, prompt: str) -> str:
    """The same rendering as evaluation (``str.format`` with only ``prompt``)."""
    try:
        return check_prompt_template(template).format(prompt=prompt)
    except ValueError as e:
        raise InputError(str(e), field="data.prompt_template") from None


INSTRUCT_MARKERS = ("instruct", "chat")


def is_instruct(*names: str) -> bool:
    """The rule behind ``chat_template: auto``: a model is an instruct model when its name, as
    given or as the directory / GGUF file it resolves to, contains "instruct" or "chat"."""
    return any(m in str(n).lower() for n in names if n for m in INSTRUCT_MARKERS)


def use_chat_template(setting: bool | str, tokenizer, *names: str) -> bool:
    """Whether prompts go through the tokenizer's chat template: ``True``/``False`` as set,
    ``"auto"``: the tokenizer has a chat template and :func:`is_instruct` holds."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if setting == "auto":
        return has and is_instruct(*names, getattr(tokenizer, "name_or_path", ""))
    if setting and not has:
        raise InputError("is true but the tokenizer has no chat template", field="data.chat_template")
    return bool(setting)


def render_prompt(tokenizer, template: str, prompt: str, chat: bool = False) -> str:
    """The prompt text the model sees: ``template`` applied, then (``chat``) the user turn and
    the assistant header."""
    text = apply_template(template, prompt)
    if chat:
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - the template is the model's Jinja: raise_exception(), a bad key
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"the tokenizer's chat template fails on a user turn ({type(e).__name__}: {msg}); "
                             "fix the template or set data.chat_template: false", field="data.chat_template") from None
    return text


def render_target(target: str, chat: bool = False) -> str:
    """The answer text: as written, or as the assistant turn's content (no leading whitespace)."""
    return target.lstrip() if chat else target


def tokenize_stream(stream: TaskStream, tokenizer, max_length: int, template: str = "{prompt}",
                    chat: bool = False) -> TaskStream:
    """Fill ``stream.samples`` with the tokenized training examples of every task. Sample ids
    run 0.. over the whole stream (task t's ids follow task t-1's); ``task_id`` is the index."""
    sp = special_tokens(tokenizer, chat)
    stream.samples, stream.truncated = [], 0
    offset = 0
    for task_id, task in enumerate(stream.tasks):
        prompts = [render_prompt(tokenizer, template, ex.prompt, chat) for ex in task.train]
        targets = [render_target(ex.target, chat) for ex in task.train]
        p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
        t_ids = tokenizer(targets, add_special_tokens=False)["input_ids"] if targets else []
        samples = []
        for i, (p, t) in enumerate(zip(p_ids, t_ids)):
            try:
                ids, labels, cut = _assemble(p, t, sp, max_length)
            except InputError as e:
                raise InputError(f"task '{task.name}', train example {i}: {e}", field=None) from None
            stream.truncated += cut
            samples.append(Sample(sample_id=offset + i, task_id=task_id, input_ids=ids, labels=labels))
        stream.samples.append(samples)
        offset += len(task.train)
    return stream
