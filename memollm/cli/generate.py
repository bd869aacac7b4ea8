"""``memollm generate``: the seed's demo, one mode or all of them side by side."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys

from ..config import MODES, knobs_for
from .common import (UsageError, add_knob_args, add_model_args, check_knobs, check_model_args, check_output_path,
                     knobs_of, load_llm, positive_int, write_output)


def add_parser(sub) -> None:
    """Register ``memollm generate`` (the seed's demo flags)."""
    p = sub.add_parser("generate", help="generate text in one mode, or compare all modes",
                       description="Generate text with Ebbinghaus KV-cache forgetting.")
    p.add_argument("--mode", choices=MODES, default="baseline", help="generation mode (default: baseline)")
    p.add_argument("--prompt", default="What is deep learning?", help="the prompt")
    p.add_argument("--max_tokens", "--max-tokens", dest="max_tokens", type=positive_int, default=50,
                   help="new tokens to generate (default: 50)")
    add_model_args(p)
    p.add_argument("--compare", action="store_true", help="run every mode and print one table")
    p.add_argument("--seed", type=int, default=None, help="random seed (sampling, random policy)")
    p.add_argument("--temperature", type=float, default=None, help="sample with this temperature")
    p.add_argument("--no-chat", action="store_true", help="send the prompt as raw text, no chat template")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the result(s) as JSON ('-' = stdout)")
    p.add_argument("--verbose", action="store_true", help="show progress and details")
    add_knob_args(p)
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
    check_knobs(args, None if args.compare else args.mode)  # --compare gives each mode the flags it reads
    modes = MODES if args.compare else (args.mode,)
    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature > 0):
        raise UsageError(f"--temperature must be a finite number > 0, got {args.temperature}")
    if not args.prompt.strip():
        raise UsageError("--prompt must be a non-empty string")
    check_output_path("--json", args.json)
    check_model_args(args)
    llm = load_llm(args)
    kwargs = dict(max_new_tokens=args.max_tokens, seed=args.seed, temperature=args.temperature,
                  chat=False if args.no_chat else None, verbose=args.verbose)
    results = [llm.generate(args.prompt, generation_mode=m, **kwargs, **knobs_for(m, knobs_of(args))) for m in modes]
    if args.compare:
        print(f"model: {llm.model_name} on {llm.device}; prompt: {args.prompt!r}")
        print(compare_table(results))
    else:
        r = results[0]
        print(r["generated_text"])
        print(f"\n[{r['mode']}] {r['num_tokens']} tokens in {r['generation_time']:.2f}s "
              f"({r['tokens_per_second']:.1f} tok/s), KV cache {r['kv_cache_tokens']} tokens", file=sys.stderr)
    if args.json:
        write_output(args.json, json.dumps(results if args.compare else results[0], indent=1, default=str))
    return 0
