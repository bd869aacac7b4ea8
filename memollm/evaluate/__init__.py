"""Quality at equal memory: perplexity, passkey retrieval, retrieval over independent documents
(``retrieval``), agreement with the full cache, and perplexity along a stream past the model's context. ``core`` streams text with the cache held to
a budget (policies side by side); one module per measurement; plots live in ``memollm.viz``
and the command line in ``memollm.cli.evaluate``."""

from .agreement import agreement
from .core import EVICTING, StreamResult, eval_config, full_logprobs, ppl, stream, table
from .passkey import FILLER, INTRO, QUESTION, passkey, passkey_budget, passkey_ids
from .perplexity import long_stream, old_share, perplexity, stream_summary
from .retrieval import TASKS, retrieval, retrieval_cases, retrieval_summary
from ..texts import default_text, text_segments  # the text helpers lessons reach through ``E``

__all__ = ["EVICTING", "FILLER", "INTRO", "QUESTION", "StreamResult", "agreement", "default_text", "eval_config",
           "full_logprobs", "long_stream", "old_share", "passkey", "passkey_budget", "passkey_ids", "perplexity",
           "ppl", "stream", "stream_summary", "table", "text_segments", "TASKS", "retrieval", "retrieval_cases",
           "retrieval_summary"]
