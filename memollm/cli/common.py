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


def fraction_list(*, low_open: bool = False, high_open: bool = False) -> Callable[[str], list[float]]:
    """Comma-separated numbers in [0, 1] (ends open as asked), e.g. ``0.25,0.125``."""
    lo, hi = "(" if low_open else "[", ")" if high_open else "]"

    def parse(text: str) -> list[float]:
        try:
            values = [float(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
        inside = [(v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1) for v in values]
        if not values or not all(inside):
            raise argparse.ArgumentTypeError(f"expected numbers in {lo}0, 1{hi}, got {text!r}")
        return values

    return parse


def _truth(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value in ("true", "1", "yes")


def add_knob_args(p: argparse.ArgumentParser, *, skip: Sequence[str] = (), defaults: dict | None = None) -> None:
    """One flag per ``MemoryConfig`` field not in ``skip``: name, help, type and default read from the
    field (``memollm.config.KNOBS``), so a new knob reaches the command line by itself. ``defaults``:
    a subcommand's own defaults for some knobs (shown in the help). Read them back with :func:`knobs_of`."""
    from ..config import KNOBS, MemoryConfig

    base, defaults = MemoryConfig(), defaults or {}
    names = [name for name in KNOBS if name not in skip]
    p.set_defaults(knob_names=names)
    group = p.add_argument_group("memory knobs", "MemoryConfig fields; a flag left out keeps the config's value")
    for name in names:
        f = KNOBS[name]
        m, dashed = f.metadata, "--" + name.replace("_", "-")
        flags = [m["flag"], dashed] if m["flag"] else [dashed]
        kwargs: dict = {"dest": name, "default": defaults.get(name)}
        if m["choices"] is not None:
            kwargs["choices"] = m["choices"]
        elif name == "policy":
            kwargs["metavar"] = "NAME"
        elif m["kind"] in (int, float):
            kwargs["type"], kwargs["metavar"] = m["kind"], m["kind"].__name__.upper()
        elif m["kind"] is bool:
            kwargs["type"], kwargs["metavar"] = _truth, "BOOL"
        shown = defaults.get(name, getattr(base, name))
        kwargs["help"] = f"{m['help']} (default: {'none' if shown is None else shown})"
        group.add_argument(*flags, **kwargs)


def knobs_of(args: argparse.Namespace) -> dict:
    """The ``MemoryConfig`` fields given on the command line (flags added by :func:`add_knob_args`)."""
    return {name: getattr(args, name) for name in getattr(args, "knob_names", ()) if getattr(args, name) is not None}


def check_knobs(args: argparse.Namespace, mode: str | None = None):
    """The config the command line asks for, validated before the (slow) model load; for a
    ``mode``, a flag that the mode never reads is refused (``MemoryConfig.check_mode``)."""
    from ..config import MemoryConfig

    try:
        cfg = MemoryConfig().replace(**knobs_of(args))
    except TypeError as exc:
        raise UsageError(str(exc)) from None
    if mode is not None:
        cfg.check_mode(mode, knobs_of(args))
    return cfg


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """``--json`` (the records) and ``--threads``, as every evaluation takes them."""
    p.add_argument("--json", metavar="PATH", default=None, help="write the records as JSON ('-' = stdout)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (on a busy 2-core machine, 1 avoids oversubscription and is far faster)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="hub id, local folder or .gguf file (default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, ...")
    p.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on GPU, fp32 on CPU), float32, float16, bfloat16")


def load_llm(args: argparse.Namespace):
    from ..llm import EbbinghausLLM

    return EbbinghausLLM(args.model, device=args.device, dtype=args.dtype)



def read_text_file(path: str) -> str:
    """The user's ``--text-file``, or a one-line error saying why it cannot be read."""
    from ..texts import load_text

    try:
        return load_text(path)
    except OSError as exc:
        raise UsageError(f"--text-file: cannot read {path!r}: {exc.strerror or exc}") from None
    except ValueError as exc:  # empty
        raise UsageError(f"--text-file: {exc}") from None


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
