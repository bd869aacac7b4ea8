"""memollm: Ebbinghaus forgetting for the KV cache of Hugging Face language models.

Every cached token has a retention R = exp(-t/S): its age t grows as tokens are read, its
strength S grows when it receives attention. Fading tokens are down-weighted
(``soft_delete``), masked (``sparse_attention``) or physically evicted to a fixed budget
(``evict``).
"""

from .config import MODES, ConfigError, MemoryConfig
from .llm import EbbinghausLLM
from .memory import EbbinghausMemory, retention
from .models import DEFAULT_MODEL, ModelNotAvailableError, load_model
from .policies import POLICIES, Policy, register_policy

__version__ = "0.1.0"

from .notebook import notebook_setup  # noqa: E402 - after __version__, which it reads

__all__ = [
    "DEFAULT_MODEL", "MODES", "POLICIES", "ConfigError", "EbbinghausLLM", "EbbinghausMemory", "MemoryConfig",
    "ModelNotAvailableError", "Policy", "load_model", "register_policy", "retention", "__version__",
]
