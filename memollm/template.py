"""A conversation as text and as tokens: the chat template or a plain transcript.

A chat keeps one KV cache for the whole conversation, so every turn's rendering must start
with the text the cache already holds; :meth:`Template.new_tokens` finds the tokens still to
read and raises :class:`ChatTemplateError` when a template rewrites the past (strips
whitespace, drops reasoning). Two formats: ``chat`` (the tokenizer's chat template) and
``transcript`` (``User: ...`` / ``Assistant: ...`` lines, no template, one line per turn).
"""

from __future__ import annotations

from typing import Any, Sequence

from .views import check_text

FORMATS = ("chat", "transcript")
"""``chat``: the tokenizer's chat template. ``transcript``: plain ``User: ...`` /
``Assistant: ...`` lines (no template), one line per turn, the reply stopping at a newline."""


class ChatTemplateError(ValueError):
    """The chat template renders the earlier conversation differently from what the cache holds."""


class Template:
    """Renders messages for one tokenizer in one format, and tokenizes what a turn adds."""

    def __init__(self, tokenizer: Any, fmt: str = "chat", system: str | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
        if system is not None:
            check_text("system", system)
        if fmt == "chat" and getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("this tokenizer has no chat template; use fmt='transcript'")
        self.tokenizer, self.fmt, self.system = tokenizer, fmt, system

    def messages(self, history: Sequence[dict[str, str]]) -> list[dict[str, str]]:
        """The system message (if any) followed by ``history``: what :meth:`render` renders."""
        return ([{"role": "system", "content": self.system}] if self.system else []) + list(history)

    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
        """``messages`` as the text the model reads."""
        if self.fmt == "chat":
            return self.tokenizer.apply_chat_template(list(messages), tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        parts = [self._special_prefix()]
        for m in messages:
            if m["role"] == "system":
                parts.append(m["content"] + "\n\n")
            elif m["role"] == "assistant":  # stored as the raw continuation of "Assistant:"
                parts.append("Assistant:" + m["content"] + "\n")
            else:
                parts.append(f"{m['role'].capitalize()}: {m['content']}\n")
        if add_generation_prompt:
            parts.append("Assistant:")
        return "".join(parts)

    def _special_prefix(self) -> str:
        """The text of the special tokens the tokenizer puts in front of plain text (a BOS, or nothing)."""
        plain = self.tokenizer("a", add_special_tokens=False).input_ids
        full = self.tokenizer("a").input_ids
        return self.tokenizer.decode(full[: len(full) - len(plain)]) if full[-len(plain):] == plain else ""

    def reply_content(self, text: str) -> str:
        """How a reply is stored in the history for this format (a transcript reply follows "Assistant:")."""
        if self.fmt == "transcript" and text and not text[0].isspace():
            return " " + text
        return text

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids if text else []

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def new_tokens(self, held: Sequence[int], pending: Sequence[int], text: str) -> list[int]:
        """Tokens to read so that a cache holding ``held`` (then the sampled but unread
        ``pending``, an end-of-turn token usually) holds ``text``, which must extend it."""
        held, pending = list(held), list(pending)
        if not held and not pending:
            return self.encode(text)
        with_pending = self.decode(held + pending)
        if text.startswith(with_pending):
            return pending + self.encode(text[len(with_pending):])
        held_text = self.decode(held)
        if pending and text.startswith(held_text):  # the template ends the turn with other tokens
            return self.encode(text[len(held_text):])
        at = next((i for i, (a, b) in enumerate(zip(held_text, text)) if a != b), min(len(held_text), len(text)))
        raise ChatTemplateError(
            "the chat template renders the earlier conversation differently from what the KV cache holds "
            f"(first difference at character {at}: cache {held_text[at:at + 40]!r}, template {text[at:at + 40]!r}); "
            "this template rewrites past turns (e.g. strips whitespace or drops reasoning), so the conversation "
            "cannot continue on the same cache. Use fmt='transcript' or call reset().")


__all__ = ["FORMATS", "ChatTemplateError", "Template"]
