"""Tokenization with prompt masking.

A sample is ``prompt tokens + target tokens + EOS``; labels are -100 on the prompt. Prompt and
target are tokenized separately (no special tokens) and concatenated, so the prompt/target
boundary is exact whatever the tokenizer merges across it.

With a chat template (``data.chat_template``) the prompt is rendered as the user turn followed by
the assistant header (``add_generation_prompt``), and the target, without its leading
whitespace, is the assistant turn ended by EOS, which for instruct tokenizers is the end-of-turn
token (``<|im_end|>``): the loss falls on the assistant turn only. Evaluation renders prompts and
answers with the same two functions, so train and test see one format.

Truncation to ``max_length``: the whole target + EOS is kept and the prompt is cut from the
LEFT (its end, next to the answer, matters most). If target + EOS alone exceed ``max_length``,
the prompt is dropped and the target's end is cut. Either cut marks the sample truncated.
"""

from __future__ import annotations

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


def _assemble(p: list[int], t: list[int], eos: int, max_length: int) -> tuple[np.ndarray, np.ndarray, bool]:
    if not t:
        raise InputError("the target is empty after tokenization", field="target")
    t = list(t) + [eos]
    truncated = False
    if len(t) >= max_length:
        truncated = bool(p) or len(t) > max_length
        p, t = [], t[:max_length]
    elif len(p) + len(t) > max_length:
        p, truncated = p[len(p) + len(t) - max_length:], True
    if not p and len(t) < 2:  # position 0 has no context, so its label is never trained
        raise InputError(f"no target token survives truncation to max_length={max_length}", field="max_length")
    ids = np.asarray(p + t, dtype=np.int64)
    labels = np.asarray([IGNORE] * len(p) + t, dtype=np.int64)
    return ids, labels, truncated


def encode(tokenizer, prompt: str, target: str, max_length: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(input_ids, labels, truncated) for one prompt/target pair."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    t = tokenizer(target, add_special_tokens=False)["input_ids"]
    return _assemble(p, t, _eos(tokenizer), max_length)


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
    eos = _eos(tokenizer)
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
                ids, labels, cut = _assemble(p, t, eos, max_length)
            except InputError as e:
                raise InputError(f"task '{task.name}', train example {i}: {e}", field=None) from None
            stream.truncated += cut
            samples.append(Sample(sample_id=offset + i, task_id=task_id, input_ids=ids, labels=labels))
        stream.samples.append(samples)
        offset += len(task.train)
    return stream
