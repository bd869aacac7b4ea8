"""The ``memollm`` command: one module per subcommand, parsing and output only.

``generate`` (the seed's demo flags), ``chat`` (a conversation with one bounded cache),
``bench`` (timing), ``eval`` (quality: ppl, passkey, agreement, stream, recall, capture),
``train-strength`` (fit a learned strength gate). User errors
(``UsageError``, the library's ``ConfigError``, a model that cannot be had) print one line
and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from ..config import ConfigError
from ..models import ModelNotAvailableError
from . import bench, chat, evaluate, generate, train
from .common import UsageError, _Parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="memollm", description="Ebbinghaus forgetting for the KV cache of language models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in (generate, chat, bench, evaluate, train):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except (UsageError, ConfigError, ModelNotAvailableError) as exc:
        print(f"memollm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("memollm: interrupted", file=sys.stderr)
        return 130


__all__ = ["UsageError", "build_parser", "main"]
