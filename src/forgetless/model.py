"""One code path for the bundled tiny model and for any Hugging Face causal LM: load, attach
LoRA, and save/restore exactly the weights that training changes."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from forgetless.config import LoraConfig, ModelConfig
from forgetless.errors import InputError

TINY_DIR: Path = Path(__file__).resolve().parent / "assets" / "tiny"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(name: str) -> str:
    return str(TINY_DIR) if name == "tiny" else name


def _is_local(name: str) -> bool:
    """Paths are told from hub ids ("org/name") by their look or by existing on disk."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or Path(name).expanduser().exists()


def _check_local(path: str) -> str:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise InputError(f"model directory {path!r} does not exist", field="model.name")
    return str(p)


def _source(name: str) -> tuple[str, bool]:
    path = resolve_model_path(name)
    if _is_local(path):
        return _check_local(path), True
    return path, False


def load_tokenizer(name: str = "tiny", *, revision: str | None = None, trust_remote_code: bool = False):
    """The model's tokenizer with a pad token (eos when it has none) and right padding."""
    from transformers import AutoTokenizer

    path, local = _source(name)
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code,
                                            local_files_only=local)
    except Exception as e:  # noqa: BLE001 - e.g. TypeError for a config.json that is a list
        raise InputError(f"cannot load tokenizer of {name!r}: {_first_line(e)}", field="model.name") from e
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise InputError(f"tokenizer of {name!r} has neither a pad nor an eos token", field="model.name")
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return _DTYPES[dtype]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model(cfg: ModelConfig, device=None):
    """(model, tokenizer); the model carries LoRA adapters when ``cfg.lora.enabled``."""
    import warnings

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per run for a 9 MB local load is noise in our own bars
    # raised inside transformers when PEFT/accelerate query the old name; nothing for a user to act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(cfg.name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    path, local = _source(cfg.name)
    if local:
        _refuse_pickle_weights(Path(path), cfg.name)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
            dtype=resolve_dtype(cfg.dtype, device), local_files_only=local)
    except Exception as e:  # noqa: BLE001 - a corrupt safetensors or a config.json that is a list raise
        # SafetensorError, TypeError, ...: all are a bad model directory, reported in one line
        raise InputError(f"cannot load model {cfg.name!r}: {_first_line(e)}", field="model.name") from e
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    if cfg.lora.enabled:
        model = attach_lora(model, cfg.lora)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    return model, tokenizer


def _refuse_pickle_weights(path: Path, name: str) -> None:
    """Weights are data: a directory whose only weights are pickles (.bin/.pt/.pth) is refused."""
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for ext in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in path.glob(ext))
    if pickles:
        raise InputError(f"model {name!r} has only pickle weights ({pickles[0]}); forgetless loads safetensors "
                         "only (convert with save_pretrained(..., safe_serialization=True))", field="model.name")


def _linear_names(model) -> list[str]:
    """Last name components of the modules LoRA can wrap (Linear, GPT-2 style Conv1D, Embedding)."""
    from transformers.pytorch_utils import Conv1D

    kinds = (torch.nn.Linear, torch.nn.Embedding, Conv1D)
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and isinstance(m, kinds)})


def attach_lora(model, lora: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    available = _linear_names(model)
    targets = [t for t in lora.target_modules if t in available]
    if not targets:
        raise InputError(f"none of {lora.target_modules} is a module of this model; "
                         f"available: {available}", field="model.lora.target_modules")
    peft_cfg = PeftLoraConfig(task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha,
                              lora_dropout=lora.dropout, target_modules=targets)
    return get_peft_model(model, peft_cfg)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The parameters training changes (LoRA adapters, or everything), by their stable names."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def save_trainable(model, path) -> None:
    state = {n: t.to("cpu").contiguous().clone() for n, t in trainable_state(model).items()}
    save_file(state, str(path))


def load_trainable(model, path) -> None:
    """Copy the saved tensors into the model in place; the file must match its trainable set."""
    saved = load_file(str(path))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if saved.keys() != params.keys():
        missing = sorted(params.keys() - saved.keys())[:3]
        extra = sorted(saved.keys() - params.keys())[:3]
        raise InputError(f"trainable weights do not match the model (missing {missing}, unexpected {extra})",
                         file=str(path))
    with torch.no_grad():
        for n, p in params.items():
            if saved[n].shape != p.shape:
                raise InputError(f"shape of {n} is {tuple(saved[n].shape)}, model has {tuple(p.shape)}",
                                 file=str(path))
            p.copy_(saved[n])


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
