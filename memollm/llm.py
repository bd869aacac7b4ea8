"""``EbbinghausLLM``: the seed's API on top of ``model.generate``.

Every mode runs inside ``model.generate`` with sdpa attention. ``baseline`` is plain
``model.generate``; the other modes attach a per-call ``MemorySession`` (hooks plus a
registered attention function) that is removed in ``finally``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from .attention import attached
from .cache import kv_cache_bytes
from .memory import MODES, MemoryConfig
from .models import DEFAULT_MODEL, load_model
from .session import MemorySession

log = logging.getLogger(__name__)

_MODEL_LOCKS: "weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(model: torch.nn.Module) -> threading.RLock:
    """The lock serialising generation on ``model``: one per model object, shared by every
    ``EbbinghausLLM`` wrapping it, since a session changes the model itself."""
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
        return lock


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EbbinghausLLM:
    """A causal LM whose KV cache forgets like human memory.

    ``EbbinghausLLM()`` loads the bundled offline model; pass a hub id or local folder, a
    ``gguf_file``, or an already loaded ``model=`` and ``tokenizer=``. ``generate`` is
    thread-safe: calls are serialised by a lock per model (shared by every wrapper of the
    same model), since a session changes the model's attention function for a call.
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
    def _lock(self) -> threading.RLock:
        return model_lock(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_positions(self) -> int | None:
        cfg = self.model.config.get_text_config()
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(cfg, name, None)
            if isinstance(value, int):
                return value
        return None

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
    def generate(
        self,
        prompt: str | Sequence[str],
        max_new_tokens: int = 50,
        generation_mode: str = "baseline",
        *,
        temperature: float | None = None,
        do_sample: bool | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        repetition_penalty: float | None = None,
        memory_budget: int | None = None,
        sink_tokens: int | None = None,
        recent_window: int | None = None,
        policy: str | None = None,
        config: MemoryConfig | None = None,
        seed: int | None = None,
        chat: bool | None = None,
        ignore_eos: bool = False,
        return_attention_weights: bool = False,
        verbose: bool = False,
        stopping_criteria: Any = None,
        streamer: Any = None,
        **unknown: Any,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Generate text in one of the modes ``baseline``, ``soft_delete``,
        ``sparse_attention`` or ``evict``; returns the seed's result dict.

        Sampling: ``do_sample`` defaults to True when ``temperature``, ``top_p`` or ``top_k``
        is given (as in the seed's examples), else greedy. A list of prompts gives a list of
        results; prompts run one at a time, so no padding ever enters a forgetting cache.
        """
        if unknown:
            import inspect

            valid = [p for p in inspect.signature(EbbinghausLLM.generate).parameters if p not in ("self", "unknown")]
            raise TypeError(f"generate() got unknown argument(s) {sorted(unknown)}; valid: {valid}")
        args = dict(max_new_tokens=max_new_tokens, generation_mode=generation_mode, temperature=temperature,
                    do_sample=do_sample, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
                    memory_budget=memory_budget, sink_tokens=sink_tokens, recent_window=recent_window,
                    policy=policy, config=config, seed=seed, chat=chat, ignore_eos=ignore_eos,
                    return_attention_weights=return_attention_weights, verbose=verbose,
                    stopping_criteria=stopping_criteria, streamer=streamer)
        if isinstance(prompt, (list, tuple)):
            if not prompt:
                raise ValueError("prompt list is empty")
            return [self.generate(p, **args) for p in prompt]
        with self._lock:
            return self._generate_one(prompt, **args)

    def resolve_config(self, config: MemoryConfig | None = None, **overrides: Any) -> MemoryConfig:
        base = config or self.config
        if not isinstance(base, MemoryConfig):
            raise TypeError(f"config must be a MemoryConfig, got {type(base).__name__}")
        changes = {k: v for k, v in overrides.items() if v is not None}
        return base.replace(**changes) if changes else base

    def _sampling_kwargs(self, temperature, do_sample, top_p, top_k, repetition_penalty) -> dict[str, Any]:
        def number(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if temperature is not None and (not number(temperature) or temperature <= 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if top_p is not None and (not number(top_p) or not 0.0 < top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
        if repetition_penalty is not None and (not number(repetition_penalty) or repetition_penalty <= 0):
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {repetition_penalty!r}")
        if do_sample is not None and not isinstance(do_sample, bool):
            raise ValueError(f"do_sample must be True, False or None, got {do_sample!r}")
        if do_sample is None:
            do_sample = any(v is not None for v in (temperature, top_p, top_k))
        out: dict[str, Any] = {"do_sample": bool(do_sample)}
        if do_sample:
            out.update(temperature=temperature if temperature is not None else 1.0,
                       top_p=top_p if top_p is not None else 1.0, top_k=top_k if top_k is not None else 0)
        else:  # neutralise sampling fields a model's generation_config may carry
            out.update(temperature=None, top_p=None, top_k=None)
        if repetition_penalty is not None:
            out["repetition_penalty"] = repetition_penalty
        return out

    def _generate_one(self, prompt, *, max_new_tokens, generation_mode, temperature, do_sample, top_p, top_k,
                      repetition_penalty, memory_budget, sink_tokens, recent_window, policy, config, seed,
                      chat, ignore_eos, return_attention_weights, verbose, stopping_criteria, streamer):
        if generation_mode not in MODES:
            raise ValueError(f"generation_mode must be one of {MODES}, got {generation_mode!r}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be an integer > 0, got {max_new_tokens!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        cfg = self.resolve_config(config, memory_budget=memory_budget, sink_tokens=sink_tokens,
                                  recent_window=recent_window, policy=policy)
        sampling = self._sampling_kwargs(temperature, do_sample, top_p, top_k, repetition_penalty)
        ids = self.encode(prompt, chat)
        prompt_len = ids.shape[1]
        limit = self.max_positions
        streams = generation_mode == "evict" and getattr(
            self.model.config.get_text_config(), "rope_parameters", None) is not None
        if limit is not None and prompt_len + max_new_tokens > limit and not streams:
            raise ValueError(
                f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's context of "
                f"{limit} positions in mode {generation_mode!r}; shorten the prompt or use generation_mode='evict'"
            )
        if seed is not None:
            torch.manual_seed(seed)
        gen_kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens, return_dict_in_generate=True, use_cache=True,
            pad_token_id=self.tokenizer.pad_token_id, stopping_criteria=stopping_criteria, streamer=streamer,
            **sampling,
        )
        if ignore_eos:
            gen_kwargs["min_new_tokens"] = max_new_tokens
        progress = tqdm(total=max_new_tokens, desc=generation_mode, leave=False) if verbose else None
        session = None
        try:
            _sync(self.device)
            start = time.perf_counter()
            if generation_mode == "baseline":
                out = self.model.generate(ids, **gen_kwargs)
            else:
                session = MemorySession(self.model, generation_mode, cfg, seed=seed or 0,
                                        record=return_attention_weights, progress=progress)
                with attached(self.model, session):
                    out = self.model.generate(ids, **gen_kwargs)
            _sync(self.device)
            elapsed = time.perf_counter() - start
        finally:
            if progress is not None:
                progress.close()
        new = out.sequences[0, prompt_len:]
        num = int(new.shape[0])
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        cache = getattr(out, "cache", None)
        kv_tokens = int(cache.get_seq_length()) if cache is not None else 0
        result: dict[str, Any] = {
            "generated_text": text,
            "num_tokens": num,
            "generation_time": elapsed,
            "tokens_per_second": num / elapsed if elapsed > 0 else float("inf"),
            "prompt_tokens": prompt_len,
            "token_ids": new.tolist(),
            "kv_cache_tokens": kv_tokens,
            "kv_cache_bytes": kv_cache_bytes(cache),
            "mode": generation_mode,
            "policy": cfg.policy if generation_mode == "evict" else None,
            "config": cfg.to_dict(),
            "memory_stats": session.memory_stats() if session else {},
            "warnings": list(session.warnings) if session else [],
        }
        if session is not None:
            result["evicted_tokens"] = session.evicted
            result["peak_kv_cache_tokens"] = session.peak_cached
            result["memory_state_bytes"] = session.state_bytes()
            if generation_mode == "evict":
                result["evict_events"] = session.evict_events
            if generation_mode == "sparse_attention":
                result["masked_positions"] = session.masked_positions()
                result["forget_events"] = session.forget_events
        if return_attention_weights:
            tw = session.token_weights(self.tokenizer) if session else None
            if tw is not None:
                all_ids = out.sequences[0].tolist()
                tw["tokens"] = [self.tokenizer.decode([all_ids[p]]) for p in tw["positions"]]
            result["token_weights"] = tw
        if verbose:
            log.info("%s: %d tokens in %.2fs (%.1f tok/s), KV cache %d tokens", generation_mode, num, elapsed,
                     result["tokens_per_second"], kv_tokens)
        return result

    def __repr__(self) -> str:
        return f"EbbinghausLLM({self.model_name!r}, device={self.device}, config={self.config})"


__all__ = ["EbbinghausLLM", "DEFAULT_MODEL"]
