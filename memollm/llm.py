"""``EbbinghausLLM``: the seed's API (``generate`` and its result dict) on the package's one
read and decode loop (``memollm.reading``).

Every mode reads the prompt into a ``DynamicCache`` and decodes token by token with sdpa
attention; ``baseline`` gives ``model.generate``'s tokens (a test checks it). The other modes
attach a per-call ``MemorySession`` (hooks plus a registered attention function) that is
removed in ``finally``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from .attention import attached
from .cache import rotary_embedding
from .config import KNOBS, MODES, ConfigError, MemoryConfig, check_bool, check_int
from .models import DEFAULT_MODEL, load_model, max_positions, stop_token_ids, timed
from .reading import decode, read, sampling_processors
from .session import MemorySession, generation_result

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateArgs:
    """``generate``'s keyword arguments, parsed and validated once.

    Sampling: ``do_sample`` defaults to True when ``temperature``, ``top_p`` or ``top_k`` is
    given (as in the seed's examples), else greedy (parsed once, by
    ``memollm.reading.sampling_processors``). ``memory``: ``MemoryConfig`` fields given by name
    (``memory_budget``, ``policy``, ...), which override the wrapper's config for one call.
    """

    max_new_tokens: int = 50
    generation_mode: str = "baseline"
    temperature: float | None = None
    do_sample: bool | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    memory: Mapping[str, Any] = field(default_factory=dict)
    prefill_chunk: int | None = None
    config: MemoryConfig | None = None
    seed: int | None = None
    chat: bool | None = None
    ignore_eos: bool = False
    return_attention_weights: bool = False
    verbose: bool = False
    stopping_criteria: Any = None
    streamer: Any = None
    sampling: tuple = field(init=False, repr=False, compare=False)  # (do_sample, logits processors)

    def __post_init__(self) -> None:
        if self.generation_mode not in MODES:
            raise ConfigError(f"generation_mode must be one of {MODES}, got {self.generation_mode!r}")
        check_int("max_new_tokens", self.max_new_tokens, 1)
        if self.seed is not None:
            check_int("seed", self.seed, 0)
        object.__setattr__(self, "sampling", sampling_processors(
            self.temperature, self.top_p, self.top_k, self.do_sample, self.repetition_penalty))
        for name in ("ignore_eos", "return_attention_weights", "verbose"):
            check_bool(name, getattr(self, name))
        if self.chat is not None:
            check_bool("chat", self.chat)
        if self.prefill_chunk is not None:
            check_int("prefill_chunk", self.prefill_chunk, 1)
            if self.generation_mode != "evict":
                raise ConfigError(f"prefill_chunk reads a prompt with eviction between chunks: it needs "
                                  f"generation_mode='evict', not {self.generation_mode!r}")
        if self.config is not None and not isinstance(self.config, MemoryConfig):
            raise TypeError(f"config must be a MemoryConfig, got {type(self.config).__name__}")

    @classmethod
    def parse(cls, kwargs: dict[str, Any]) -> "GenerateArgs":
        """Split ``generate``'s keywords into its own and ``MemoryConfig`` fields; others are a TypeError."""
        names = [f.name for f in fields(cls) if f.init and f.name != "memory"]
        unknown = sorted(set(kwargs) - set(names) - set(KNOBS))
        if unknown:
            raise TypeError(f"generate() got unknown argument(s) {unknown}; valid: {names} and the MemoryConfig "
                            f"fields {list(KNOBS)}")
        memory = {k: v for k, v in kwargs.items() if k in KNOBS}
        return cls(**{k: v for k, v in kwargs.items() if k not in KNOBS}, memory=memory)

    def memory_overrides(self) -> dict[str, Any]:
        """Config changes asked for this call."""
        return {k: v for k, v in self.memory.items() if v is not None}


class EbbinghausLLM:
    """A causal LM whose KV cache forgets like human memory.

    ``EbbinghausLLM()`` loads the bundled offline model; pass a hub id or local folder, a
    ``gguf_file``, or an already loaded ``model=`` and ``tokenizer=``. ``generate`` is
    thread-safe: calls are serialised by a lock per model (``memollm.attention.exclusive``,
    shared by every wrapper of the same model), since a session changes the model itself.
    """

    def __init__(
        self,
        model_name: str | None = None,
        *,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        config: MemoryConfig | None = None,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        gguf_file: str | None = None,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
    ) -> None:
        if (model is None) != (tokenizer is None):
            raise ValueError("pass both model= and tokenizer= to wrap a loaded model, or neither")
        if config is not None and not isinstance(config, MemoryConfig):
            raise TypeError(f"config must be a MemoryConfig, got {type(config).__name__}")
        if model is not None:
            self.model, self.tokenizer = model.eval(), tokenizer
            self.model_name = model_name or getattr(model.config, "_name_or_path", type(model).__name__)
            if getattr(self.tokenizer, "pad_token_id", None) is None and getattr(self.tokenizer, "eos_token", None):
                self.tokenizer.pad_token = self.tokenizer.eos_token
        else:
            loaded = load_model(model_name, device=device, dtype=dtype, gguf_file=gguf_file,
                                trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
            self.model, self.tokenizer, self.model_name = loaded.model, loaded.tokenizer, loaded.name
        self.config = config or MemoryConfig()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_positions(self) -> int | None:
        return max_positions(self.model)

    # -- prompt handling -------------------------------------------------------------------
    def encode(self, prompt: str, chat: bool | None = None) -> torch.Tensor:
        """Token ids ``[1, n]``; the chat template is applied when the tokenizer has one."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        use_chat = getattr(self.tokenizer, "chat_template", None) is not None if chat is None else chat
        if use_chat:
            if getattr(self.tokenizer, "chat_template", None) is None:
                raise ValueError("chat=True but the tokenizer has no chat template; pass chat=False")
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        else:
            ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        return ids.to(self.device)

    # -- generation --------------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[str], max_new_tokens: int = 50, generation_mode: str = "baseline",
                 **kwargs: Any) -> dict[str, Any] | list[dict[str, Any]]:
        """Generate text in one of the modes ``baseline``, ``soft_delete``,
        ``sparse_attention`` or ``evict``; returns the seed's result dict.

        Keywords (see ``GenerateArgs``): ``temperature``, ``do_sample``, ``top_p``, ``top_k``,
        ``repetition_penalty``, ``prefill_chunk``, ``config``, ``seed``, ``chat``, ``ignore_eos``,
        ``return_attention_weights``, ``verbose``, ``stopping_criteria``, ``streamer``; and any
        ``MemoryConfig`` field by name (``memory_budget``, ``policy``, ``sink_tokens``, ...), which
        overrides ``config`` (else the wrapper's config) for this call.
        A list of prompts gives a list of results; prompts run one at a time, so no padding
        ever enters a forgetting cache.

        Reading a long prompt in ``evict``: by default it is prefilled in one pass and
        compressed right after (question-aware: the policies see what its last queries look
        at, but the cache briefly holds the whole prompt). ``prefill_chunk=N`` reads it N
        tokens at a time with eviction between chunks, so the cache never exceeds the
        budget, at the price of compressing before the end of the prompt (the question) is read.
        """
        args = GenerateArgs.parse(dict(kwargs, max_new_tokens=max_new_tokens, generation_mode=generation_mode))
        if isinstance(prompt, (list, tuple)):
            if not prompt:
                raise ConfigError("prompt list is empty")
            return [self._generate_one(p, args) for p in prompt]
        return self._generate_one(prompt, args)

    def resolve_config(self, config: MemoryConfig | None = None, mode: str | None = None,
                       **overrides: Any) -> MemoryConfig:
        """``config`` (else the wrapper's) with ``overrides`` applied; for a ``mode``, a knob that the
        mode never reads is a ``ConfigError`` (``MemoryConfig.check_mode``), as in chats and commands."""
        base = config or self.config
        if not isinstance(base, MemoryConfig):
            raise TypeError(f"config must be a MemoryConfig, got {type(base).__name__}")
        changes = {k: v for k, v in overrides.items() if v is not None}
        cfg = base.replace(**changes) if changes else base
        if mode is not None:
            cfg.check_mode(mode, changes)
        return cfg

    def _check_length(self, prompt_len: int, args: GenerateArgs, cfg: MemoryConfig) -> list[str]:
        """Generation limits, said up front; returns the warnings for a run past the trained positions.

        Only ``evict`` with rotary positions can go past the model's context: the cache stays
        at the budget. With ``positions="true"`` the new tokens' positions still grow past the
        trained range (quality degrades, measured in the README); ``positions="cache"`` keeps
        every position inside the budget. Learned absolute positions have a hard table end.
        """
        limit = self.max_positions
        total = prompt_len + args.max_new_tokens
        if limit is None or total <= limit:
            return []
        where = (f"prompt ({prompt_len} tokens) + max_new_tokens ({args.max_new_tokens}) exceeds the model's "
                 f"context of {limit} positions")
        if prompt_len > limit and not (args.generation_mode == "evict" and args.prefill_chunk):
            raise ConfigError(f"the prompt ({prompt_len} tokens) is longer than the model's context of {limit} "
                              "positions; shorten it, or read it in chunks (generation_mode='evict', prefill_chunk=N)")
        if args.generation_mode != "evict" or cfg.policy == "full":
            raise ConfigError(f"{where} in mode {args.generation_mode!r} with policy {cfg.policy!r}; shorten the "
                              "prompt or use generation_mode='evict' with an evicting policy")
        if rotary_embedding(self.model) is None:
            raise ConfigError(f"{where}, and {type(self.model).__name__} learns its {limit} absolute positions: "
                              "it cannot go past them in any mode")
        if cfg.positions == "true":
            return [f"{where}: with positions='true' the new tokens get positions the model was not trained on "
                    "(quality falls past it); positions='cache' keeps every position inside the budget"]
        return []

    def _generate_one(self, prompt: str, args: GenerateArgs) -> dict[str, Any]:
        cfg = self.resolve_config(args.config, args.generation_mode, **args.memory_overrides())
        ids = self.encode(prompt, args.chat)
        warnings = self._check_length(ids.shape[1], args, cfg)
        if args.seed is not None:
            torch.manual_seed(args.seed)
        session = None if args.generation_mode == "baseline" else MemorySession(
            self.model, args.generation_mode, cfg, seed=args.seed or 0, record=args.return_attention_weights)
        new, cache, elapsed = self._run(ids, args, cfg, session)
        result = generation_result(self.tokenizer.decode(new, skip_special_tokens=True), new, elapsed,
                                   ids.shape[1], cache, args.generation_mode, cfg)
        if session is not None:
            result.update(session.results())
        result["warnings"] = warnings + result["warnings"]
        if args.return_attention_weights:
            tw = session.token_weights() if session else None
            if tw is not None:
                all_ids = ids[0].tolist() + new
                tw["tokens"] = [self.tokenizer.decode([all_ids[p]]) for p in tw["positions"]]
            result["token_weights"] = tw
        if args.verbose:  # the caller asked to see it: stderr, and the log for those who collect it
            summary = (f"{args.generation_mode}: {result['num_tokens']} tokens in {elapsed:.2f}s "
                       f"({result['tokens_per_second']:.1f} tok/s), KV cache {result['kv_cache_tokens']} tokens")
            log.info(summary)
            tqdm.write(summary, file=sys.stderr)
        return result

    def _run(self, ids: torch.Tensor, args: GenerateArgs, cfg: MemoryConfig, session: MemorySession | None):
        """Read ``ids`` into a new cache (``prefill_chunk`` tokens a pass if asked) and decode, with
        ``session`` attached; returns the new token ids, the cache and the seconds it took."""
        cache = DynamicCache(config=self.model.config)
        chunk = args.prefill_chunk if args.prefill_chunk is not None and ids.shape[1] > args.prefill_chunk else None
        if chunk is not None:
            cfg.check_budget(cfg.memory_budget, chunk)
        do_sample, processors = args.sampling
        stop_ids = () if args.ignore_eos else stop_token_ids(self.model, self.tokenizer)

        read_so_far = [0]

        def step(x: torch.Tensor) -> torch.Tensor:
            """Read ``x`` at its true positions (a session counting positions in the cache re-ranks them)."""
            start = read_so_far[0]
            read_so_far[0] += x.shape[1]
            pos = torch.arange(start, start + x.shape[1], device=x.device)[None]
            return self.model(x, cache=cache, use_cache=True, position_ids=pos).logits

        with tqdm(total=args.max_new_tokens, desc=args.generation_mode, leave=False,
                  disable=not args.verbose) as progress, torch.no_grad():
            on_token = _Observers(progress, args.streamer, args.stopping_criteria, ids)
            with attached(self.model, session), timed(self.device) as clock:
                logits = read(step, ids, chunk=chunk)
                out = decode(step, logits, args.max_new_tokens, processors=processors, context=ids,
                             do_sample=do_sample, stop_ids=stop_ids, on_token=on_token)
            on_token.end()
        return out.row(), cache, clock.seconds

    def chat(self, generation_mode: str = "evict", **options: Any):
        """A conversation that keeps one bounded KV cache across turns (see ``memollm.chat``)."""
        from .chat import ChatSession  # chat builds on this class

        return ChatSession(self, generation_mode=generation_mode, **options)

    def __repr__(self) -> str:
        return f"EbbinghausLLM({self.model_name!r}, device={self.device}, config={self.config})"


__all__ = ["EbbinghausLLM", "DEFAULT_MODEL"]


class _Observers:
    """What sees each new token: the progress bar, the caller's streamer (``model.generate``'s
    protocol: the prompt first, then each token, then ``end()``) and stopping criteria."""

    def __init__(self, progress, streamer, criteria, prompt: torch.Tensor) -> None:
        self.progress, self.streamer, self.criteria = progress, streamer, criteria
        if streamer is not None:
            streamer.put(prompt.cpu())

    def __call__(self, ids: torch.Tensor, scores: torch.Tensor) -> bool:
        self.progress.update(1)
        if self.streamer is not None:
            self.streamer.put(ids[:, -1].cpu())
        return self.criteria is not None and bool(self.criteria(ids, scores).all())

    def end(self) -> None:
        if self.streamer is not None:
            self.streamer.end()
