"""A conversation that keeps one bounded KV cache across turns.

``ChatSession`` holds one transformers ``DynamicCache`` and, in the memory modes, one
``MemorySession`` for the whole conversation. Each ``send`` renders the whole history
(:mod:`memollm.template`), reads only the new tokens through :func:`memollm.reading.read` (in
chunks that keep the cache within ``memory_budget``: the room rule) and decodes the reply with
:func:`memollm.reading.decode` on the same cache. The memory state (strength, age, a policy's
scores) carries over from turn to turn, so a fact attended to again in a later turn is reinforced.

Turn boundaries. Generation stops at an end-of-turn token (``<|im_end|>``) that is sampled
but never fed to the model; the next turn's rendering starts with it, so it is fed first
when the template agrees (else it is dropped and the template's own end-of-turn text is
read). Every token gets its true position in the conversation (0, 1, 2, ...), also after
eviction, as in ``generate(..., generation_mode="evict")``.

Settings. A chat resolves its config as ``generate`` does (``granularity="auto"`` ranks per
layer in ``evict``; a user turn read in one pass is reviewed by its last
``observation_window`` queries). A knob the chosen mode cannot use is refused with the same
``ConfigError`` as in ``generate`` (``MemoryConfig.check_mode``), never dropped. The views
(``cached_positions``, ``retention``, ...) show the union over the layers unless asked for one
``layer``.

This module sits below ``memollm.llm``: it takes the ``EbbinghausLLM`` duck-typed
(``.model``, ``.tokenizer``, ``.config``, ``.resolve_config``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch
from transformers import DynamicCache

from .attention import attached, exclusive
from .config import MODES, ConfigError, MemoryConfig, check_int
from .models import max_positions, stop_token_ids, timed
from .reading import decode, read, room, sampling_processors
from .session import MemorySession, generation_result
from .template import ChatTemplateError, Template
from .views import ConversationViews, check_text

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "do_sample", "repetition_penalty")


class ChatSession(ConversationViews):
    """A conversation with one KV cache and one memory state that persist across turns.

    ``send(message)`` appends a user turn, reads only its new tokens and generates the
    reply; ``add_turn(message, reply)`` appends a user turn with a given reply (read, not
    generated: teacher forcing); ``history`` holds the turns; ``reset()`` starts over.

    ``generation_mode``: one of ``MODES``; ``baseline`` keeps every token (the reference),
    ``evict`` holds the cache to ``memory_budget`` tokens with ``policy``. ``system``: a
    system message (the template's default system prompt otherwise). ``fmt``: ``"chat"``
    (the tokenizer's chat template) or ``"transcript"`` (``User: ...`` / ``Assistant: ...``
    lines, for models that follow a plain transcript better than their template).
    ``prefill_chunk``: at most this many tokens per forward pass when reading a turn (in
    ``evict`` the chunks are also cut so that the cache never exceeds the budget). Any other
    ``MemoryConfig`` field (``granularity``, ``observation_window``, ...) may be passed by
    name; ``config`` is the base, else the llm's config, as in ``generate``.
    """

    def __init__(self, llm, generation_mode: str = "evict", memory_budget: int | None = None,
                 policy: str | None = None, system: str | None = None, config: MemoryConfig | None = None,
                 sink_tokens: int | None = None, recent_window: int | None = None, seed: int = 0, *,
                 fmt: str = "chat", prefill_chunk: int | None = None, **knobs: Any) -> None:
        for attr in ("model", "tokenizer", "resolve_config"):
            if not hasattr(llm, attr):
                raise TypeError(
                    f"ChatSession needs an EbbinghausLLM (an object with .{attr}), got {type(llm).__name__}")
        if generation_mode not in MODES:
            raise ValueError(f"generation_mode must be one of {MODES}, got {generation_mode!r}")
        self.template = Template(llm.tokenizer, fmt, system)
        check_int("seed", seed, 0)
        if prefill_chunk is not None:
            check_int("prefill_chunk", prefill_chunk, 1)
        if config is not None and not isinstance(config, MemoryConfig):
            raise TypeError(f"config must be a MemoryConfig, got {type(config).__name__}")
        self.llm = llm
        self.model, self.tokenizer = llm.model, llm.tokenizer
        self.mode, self.fmt, self.system, self.seed = generation_mode, fmt, system, seed
        self.prefill_chunk = prefill_chunk
        knobs.update(memory_budget=memory_budget, policy=policy, sink_tokens=sink_tokens,
                     recent_window=recent_window)
        # a knob the mode never reads is a ConfigError naming it, as in generate
        self.config: MemoryConfig = llm.resolve_config(config, generation_mode, **knobs)
        self.stop_ids = stop_token_ids(self.model, self.tokenizer)
        self.max_positions: int | None = max_positions(self.model)
        self.reset()

    # -- state -----------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the whole conversation: a new cache, a new memory state, no history."""
        self.history: list[dict[str, str]] = []
        self.cache = DynamicCache(config=self.model.config)
        self.session = None if self.mode == "baseline" else MemorySession(
            self.model, self.mode, self.config, seed=self.seed)
        self._ids: list[int] = []  # every token read into the cache, in order: token i has true position i
        self._pending: list[int] = []  # the last sampled token, not yet read (an end-of-turn token, usually)
        self.boundaries: list[tuple[str, int]] = []  # (role, true position where its tokens start)
        self.steps = 0  # forward passes so far (as the session counts them)
        self.peak_cached = 0  # the most tokens the cache held in the current turn
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self._broken: str | None = None
        self.warnings: list[str] = []

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def messages(self) -> list[dict[str, str]]:
        """The system message (if any) followed by the history: what the template renders."""
        return self.template.messages(self.history)

    @property
    def turn(self) -> int:
        """Number of user turns so far."""
        return sum(1 for m in self.history if m["role"] == "user")

    @property
    def token_ids(self) -> list[int]:
        """Every token read into the cache so far; token ``i`` has true position ``i``."""
        return list(self._ids)

    # -- rendering -------------------------------------------------------------------------
    def render(self, messages: Sequence[dict[str, str]] | None = None, add_generation_prompt: bool = False) -> str:
        """The conversation as text, as this session feeds it to the model."""
        return self.template.render(self.messages if messages is None else messages, add_generation_prompt)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.template.decode(ids)

    def _new_tokens(self, text: str) -> list[int]:
        """Tokens to read so that the cache holds ``text`` (which must extend what it holds)."""
        return self.template.new_tokens(self._ids, self._pending, text)

    # -- forward passes -----------------------------------------------------------------------
    def _step(self, x: torch.Tensor) -> torch.Tensor:
        """Read ids ``[1, n]`` at their true positions; their logits ``[1, n, vocab]``."""
        start = len(self._ids)
        pos = torch.arange(start, start + x.shape[1], device=self.device)[None]
        out = self.model(input_ids=x, cache=self.cache, use_cache=True, position_ids=pos)
        self._ids.extend(x[0].tolist())
        self.steps += 1
        self.peak_cached = max(self.peak_cached, self.num_cached)
        return out.logits

    def _read(self, ids: Sequence[int]) -> torch.Tensor | None:
        """Read ``ids`` in chunks of at most ``prefill_chunk`` that (in ``evict``) keep the cache within the budget."""
        evicting = self.session is not None and self.mode == "evict" and self.session.policy.evicts
        limit = (lambda: room(self.config, self.num_cached)) if evicting else None
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        return read(self._step, x, chunk=self.prefill_chunk, limit=limit)

    def _check_room(self, n_new: int) -> None:
        if self.max_positions is None or len(self._ids) + n_new <= self.max_positions:
            return
        message = (f"the conversation ({len(self._ids) + n_new} tokens) runs past the model's "
                   f"{self.max_positions} positions")
        if self.mode != "evict":
            raise ConfigError(message + f" in mode {self.mode!r}; reset() or use generation_mode='evict'")
        if self.config.positions == "cache":  # positions counted inside the cache stay small
            return
        if message not in self.warnings:  # true positions past the trained range: quality falls
            self.warnings.append(message + ": positions beyond the trained range")

    def _check_usable(self) -> None:
        if self._broken:
            raise RuntimeError(f"this chat session failed earlier ({self._broken}); call reset() to start over")

    @contextlib.contextmanager
    def _turn(self):
        """Hold the model (and attach the session) for one turn; a failure leaves the session unusable."""
        self._check_usable()
        try:
            with torch.no_grad(), exclusive(self.model):
                if self.session is None:
                    yield
                else:
                    with attached(self.model, self.session):
                        yield
        except BaseException as exc:
            self._broken = f"{type(exc).__name__}: {exc}"
            raise

    # -- turns --------------------------------------------------------------------------------
    def add_turn(self, message: str, reply: str) -> dict[str, Any]:
        """Append a user turn and a given assistant reply, and read both into the cache.

        Nothing is generated (teacher forcing): a scripted conversation, or a reply that
        came from elsewhere. Returns ``turn``, ``prompt_tokens`` (tokens read) and the cache size.
        """
        self._check_usable()
        check_text("message", message)
        check_text("reply", reply)
        messages = self.messages + [{"role": "user", "content": message},
                                    {"role": "assistant", "content": self.template.reply_content(reply)}]
        user_text = self.render(messages[:-1], add_generation_prompt=True)
        full = self.render(messages)
        if not full.startswith(user_text):
            raise ChatTemplateError("the chat template does not render a reply after its generation prompt; "
                                    "use fmt='transcript'")
        new_user = self._new_tokens(user_text)
        new_reply = self.template.encode(full[len(user_text):])
        self._check_room(len(new_user) + len(new_reply))
        first = len(self._ids)
        self.peak_cached = self.num_cached
        with self._turn():
            self._read(new_user)
            self._pending = []
            self._read(new_reply)
        self.boundaries += [("user", first), ("assistant", first + len(new_user))]
        self.history.extend(messages[-2:])
        return {"turn": self.turn, "prompt_tokens": len(new_user) + len(new_reply),
                "kv_cache_tokens": self.num_cached, "conversation_tokens": len(self._ids)}

    def send(self, message: str, max_new_tokens: int = 64, *, reply_prefix: str | None = None,
             stop: Sequence[str] | None = None, ignore_eos: bool = False, **sampling: Any) -> dict[str, Any]:
        """Append a user turn, read its new tokens, and generate the reply with the same cache.

        Greedy by default; ``temperature``, ``top_p``, ``top_k``, ``do_sample`` and
        ``repetition_penalty`` as in ``generate`` (sampling draws from this session's seeded
        generator). ``reply_prefix``: text the reply starts with (read, not generated; it is
        part of the reply in ``history`` but not of ``generated_text``). ``stop``: strings
        that end the reply (a transcript stops at a newline). Returns ``generate``'s result
        keys plus ``turn``.
        """
        self._check_usable()
        check_text("message", message)
        check_int("max_new_tokens", max_new_tokens, 1)
        if reply_prefix is not None:
            check_text("reply_prefix", reply_prefix)
        unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
        if unknown:
            raise TypeError(f"send() got unknown argument(s) {unknown}; valid: max_new_tokens, reply_prefix, stop, "
                            f"ignore_eos, {', '.join(SAMPLING_KEYS)}")
        if not isinstance(ignore_eos, bool):
            raise ValueError(f"ignore_eos must be True or False, got {ignore_eos!r}")
        stops = list(stop) if stop is not None else (["\n"] if self.fmt == "transcript" else [])
        if any(not isinstance(s, str) or not s for s in stops):
            raise ValueError(f"stop must be a list of non-empty strings, got {stop!r}")
        do_sample, processors = sampling_processors(**sampling)
        prefix = self.template.reply_content(reply_prefix) if reply_prefix else ""
        prompt_text = self.render(self.messages + [{"role": "user", "content": message}],
                                  add_generation_prompt=True) + prefix
        new = self._new_tokens(prompt_text)
        self._check_room(len(new) + max_new_tokens)
        turn_step, evicted_before, first = self.steps, self._evicted(), len(self._ids)
        self.peak_cached = self.num_cached
        with self._turn(), timed(self.device) as clock:
            logits = self._read(new)
            self._pending = []
            reply_start = len(self._ids)
            tokens, text = self._decode_reply(logits, max_new_tokens, processors, do_sample, stops, ignore_eos)
        self.boundaries += [("user", first), ("assistant", reply_start)]
        self.history.append({"role": "user", "content": message})
        self.history.append({"role": "assistant", "content": prefix + text})
        return self._result(tokens, stops, clock.seconds, len(new), turn_step, evicted_before)

    def _decode_reply(self, logits, max_new_tokens, processors, do_sample, stops, ignore_eos):
        """Generate until a stop token or string; the last sampled token is kept pending (not read)."""
        out = decode(self._step, logits, max_new_tokens, processors=processors,
                     context=torch.tensor([self._ids], dtype=torch.long, device=self.device), do_sample=do_sample,
                     generator=self.generator, stop_ids=() if ignore_eos else self.stop_ids, stop_strings=stops,
                     detokenize=self._decode)
        tokens = out.row()
        self._pending = tokens[-1:]
        content = self._decode(tokens[:-1] if out.stopped else tokens)
        for s in stops:
            if s in content:
                content = content[:content.index(s)]
        return tokens, content

    def _evicted(self) -> int:
        return len(self._ids) - self.num_cached

    def _result(self, tokens, stops, elapsed, prompt_tokens, turn_step, evicted_before) -> dict[str, Any]:
        session = self.session
        body = tokens[:-1] if tokens and tokens[-1] in self.stop_ids else tokens
        generated = self.tokenizer.decode(body, skip_special_tokens=True)
        for s in stops:
            generated = generated.split(s, 1)[0]
        result = generation_result(generated.strip() if self.fmt == "transcript" else generated, tokens, elapsed,
                                   prompt_tokens, self.cache, self.mode, self.config)
        result.update(warnings=list(self.warnings), turn=self.turn,
                      conversation_tokens=len(self._ids) + len(self._pending))
        if session is not None:
            result.update(session.results(since=turn_step), evicted_tokens=self._evicted() - evicted_before,
                          peak_kv_cache_tokens=self.peak_cached,
                          warnings=list(self.warnings) + [w for w in session.warnings if w not in self.warnings])
        return result

    def __repr__(self) -> str:
        budget = f", budget={self.config.memory_budget}, policy={self.config.policy!r}" if self.mode == "evict" else ""
        return (f"ChatSession(mode={self.mode!r}{budget}, turns={self.turn}, "
                f"cached={self.num_cached}/{len(self._ids)} tokens)")


__all__ = ["ChatSession", "ChatTemplateError"]
