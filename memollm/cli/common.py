"""What every subcommand shares: argument types, model flags, user errors, output writing."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A bad command-line value: reported in one line, exit status 2."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected an integer > 0, got {value}")
    return value


def int_list(text: str) -> list[int]:
    """Comma-separated positive integers, e.g. ``128,1024,7500``."""
    try:
        values = [positive_int(part.strip()) for part in text.split(",") if part.strip()]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} in list {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}")
    return values


def name_list(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [part.strip() for part in text.split(",") if part.strip()]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown name(s) {bad or [text]}; choose from {', '.join(allowed)}")
        return names

    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="hub id, local folder or .gguf file (default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, ...")
    p.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on GPU, fp32 on CPU), float32, float16, bfloat16")


def load_llm(args: argparse.Namespace):
    from ..llm import EbbinghausLLM

    return EbbinghausLLM(args.model, device=args.device, dtype=args.dtype)



def check_output_path(flag: str, path: str | None) -> None:
    """Fail before a long run if ``path`` cannot be written (``-`` is stdout)."""
    if path and path != "-":
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UsageError(f"{flag}: cannot write {path!r}: folder {folder!r} is missing or not writable")


def write_output(path: str, text: str) -> None:
    """Write ``text`` to ``path``, or print it when ``path`` is ``-``."""
    if path == "-":
        print(text)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text if text.endswith("\n") else text + "\n")


def out_stream(*paths: str | None):
    """Tables go to stderr when a result is written to stdout (``-``), else to stdout."""
    return sys.stderr if "-" in paths else sys.stdout


def check_model_args(args: argparse.Namespace) -> None:
    """Check ``--device`` and ``--dtype`` before the (slow) model load."""
    from ..models import auto_device, auto_dtype

    try:
        auto_dtype(auto_device(args.device), args.dtype)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
