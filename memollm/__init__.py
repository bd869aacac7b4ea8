"""memollm: Ebbinghaus forgetting for the KV cache of Hugging Face language models.

Every cached token has a retention R = exp(-t/S): its age t grows as tokens are read, its
strength S grows when it receives attention. Fading tokens are down-weighted
(``soft_delete``), masked (``sparse_attention``) or physically evicted to a fixed budget
(``evict``).
"""

import importlib.metadata as _metadata
import re as _re
from pathlib import Path as _Path

from .config import MODES, ConfigError, MemoryConfig
from .llm import EbbinghausLLM
from .memory import EbbinghausMemory, retention
from .models import DEFAULT_MODEL, ModelNotAvailableError, load_model
from .policies import POLICIES, Policy, register_policy



def _version() -> str:
    """The installed release; in a source checkout that was never installed, pyproject's (its one home)."""
    try:
        return _metadata.version("memollm")
    except _metadata.PackageNotFoundError:
        pyproject = _Path(__file__).resolve().parent.parent / "pyproject.toml"
        found = _re.search(r'^version = "([^"]+)"', pyproject.read_text(), _re.M) if pyproject.exists() else None
        return found.group(1) if found else "0+unknown"


__version__ = _version()

__all__ = [
    "DEFAULT_MODEL", "MODES", "POLICIES", "ConfigError", "EbbinghausLLM", "EbbinghausMemory", "MemoryConfig",
    "ModelNotAvailableError", "Policy", "load_model", "register_policy", "retention", "__version__",
]


def __getattr__(name: str):
    """``memollm.notebook_setup`` (the notebooks' first cell), imported on first use: the core
    (``import memollm``, generate, chat) never imports the notebook helpers or the tools
    (stats, evaluate, bench, viz), which need the ``eval`` extra. tests/test_core.py checks it."""
    if name == "notebook_setup":
        from .notebook import notebook_setup

        return notebook_setup
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
