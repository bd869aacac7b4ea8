"""The ``memollm`` command: ``generate`` (the seed's demo flags), ``bench`` and ``eval``.

User errors print one line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
from typing import Callable, Sequence

from .memory import MODES

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
    from .llm import EbbinghausLLM

    return EbbinghausLLM(args.model, device=args.device, dtype=args.dtype)


# -- generate -------------------------------------------------------------------------------
def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text in one mode, or compare all modes",
                       description="Generate text with Ebbinghaus KV-cache forgetting.")
    p.add_argument("--mode", choices=MODES, default="baseline", help="generation mode (default: baseline)")
    p.add_argument("--prompt", default="What is deep learning?", help="the prompt")
    p.add_argument("--max_tokens", "--max-tokens", dest="max_tokens", type=positive_int, default=50,
                   help="new tokens to generate (default: 50)")
    add_model_args(p)
    p.add_argument("--compare", action="store_true", help="run every mode and print one table")
    p.add_argument("--budget", type=positive_int, default=None, help="KV-cache budget in tokens for evict mode")
    p.add_argument("--policy", default=None, help="eviction policy for evict mode (default: ebbinghaus)")
    p.add_argument("--seed", type=int, default=None, help="random seed (sampling, random policy)")
    p.add_argument("--temperature", type=float, default=None, help="sample with this temperature")
    p.add_argument("--no-chat", action="store_true", help="send the prompt as raw text, no chat template")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the result(s) as JSON ('-' = stdout)")
    p.add_argument("--verbose", action="store_true", help="show progress and details")
    p.set_defaults(handler=run_generate)


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def compare_table(results: list[dict]) -> str:
    """One aligned table: mode, tokens, tok/s, KV tokens, text cut to fit the terminal."""
    head = f"{'mode':<17} {'tokens':>6} {'tok/s':>7} {'KV tokens':>9}  text"
    width = max(20, min(shutil.get_terminal_size((110, 24)).columns, 160) - len(head) + 4)
    lines = [head, "-" * (len(head) + width - 4)]
    for r in results:
        lines.append(f"{r['mode']:<17} {r['num_tokens']:>6} {r['tokens_per_second']:>7.1f} "
                     f"{r['kv_cache_tokens']:>9}  {_cut(r['generated_text'], width)}")
    return "\n".join(lines)


def run_generate(args: argparse.Namespace) -> int:
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    from .memory import MemoryConfig

    try:  # validate before the (slow) model load
        MemoryConfig().replace(**{k: v for k, v in (("memory_budget", args.budget), ("policy", args.policy))
                                  if v is not None})
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature > 0):
        raise UsageError(f"--temperature must be a finite number > 0, got {args.temperature}")
    if not args.prompt.strip():
        raise UsageError("--prompt must be a non-empty string")
    if args.json and args.json != "-":
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UsageError(f"--json: cannot write {args.json!r}: folder {folder!r} is missing or not writable")
    from .models import auto_device, auto_dtype

    try:
        auto_dtype(auto_device(args.device), args.dtype)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    llm = load_llm(args)
    kwargs = dict(max_new_tokens=args.max_tokens, memory_budget=args.budget, policy=args.policy, seed=args.seed,
                  temperature=args.temperature, chat=False if args.no_chat else None, verbose=args.verbose)
    modes = MODES if args.compare else (args.mode,)
    results = [llm.generate(args.prompt, generation_mode=m, **kwargs) for m in modes]
    if args.compare:
        print(f"model: {llm.model_name} on {llm.device}; prompt: {args.prompt!r}")
        print(compare_table(results))
    else:
        r = results[0]
        print(r["generated_text"])
        print(f"\n[{r['mode']}] {r['num_tokens']} tokens in {r['generation_time']:.2f}s "
              f"({r['tokens_per_second']:.1f} tok/s), KV cache {r['kv_cache_tokens']} tokens", file=sys.stderr)
    if args.json:
        payload = results if args.compare else results[0]
        text = json.dumps(payload, indent=1, default=str)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as fh:
                fh.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="memollm", description="Ebbinghaus forgetting for the KV cache of language models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    from .bench import add_parser as add_bench  # late imports: both modules import this one
    from .evaluate import add_parser as add_eval

    _add_generate(sub)
    add_bench(sub)
    add_eval(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from .models import ModelNotAvailableError

    try:
        return int(args.handler(args) or 0)
    except (UsageError, ModelNotAvailableError, ValueError) as exc:
        print(f"memollm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("memollm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
