"""``memollm chat`` and ``memollm eval recall``: argument parsing and output only.

``add_parser(sub)`` / ``run(args)`` are the ``chat`` subcommand; ``add_recall_parser(esub)`` /
``run_recall(args)`` the ``recall`` evaluation, hung under ``memollm eval`` by ``cli.evaluate``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Iterable, TextIO

from ..config import MODES, POLICIES, MemoryConfig
from .common import (UsageError, add_model_args, check_model_args, check_output_path, int_list, load_llm, name_list,
                     positive_int)


# -- memollm chat ------------------------------------------------------------------------------------
def add_parser(sub) -> None:
    from ..chat import FORMATS

    p = sub.add_parser("chat", help="a conversation with one bounded KV cache, turns read from stdin or a file",
                       description="Chat with the model: one turn per line (stdin or --file); the KV cache is kept "
                                   "across turns and, in evict mode, held to --budget tokens.")
    p.add_argument("--file", default=None, help="read the turns from this UTF-8 file, one per line (default: stdin)")
    p.add_argument("--mode", choices=MODES, default="evict", help="generation mode (default: evict)")
    p.add_argument("--budget", type=positive_int, default=None,
                   help="KV-cache budget in tokens for evict mode (default: config, 512)")
    p.add_argument("--policy", default=None, help="eviction policy for evict mode (default: ebbinghaus)")
    p.add_argument("--sinks", type=int, default=None, help="attention-sink tokens kept (default: config, 4)")
    p.add_argument("--window", type=positive_int, default=None, help="recent tokens kept (default: config, 32)")
    p.add_argument("--max-tokens", "--max_tokens", dest="max_tokens", type=positive_int, default=64,
                   help="most new tokens per reply (default: 64)")
    p.add_argument("--system", default=None, help="a system message")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default="chat",
                   help="chat: the tokenizer's chat template (default); transcript: 'User:' / 'Assistant:' lines")
    p.add_argument("--temperature", type=float, default=None, help="sample with this temperature (default: greedy)")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling and the random policy (default: 0)")
    p.add_argument("--show-memory", action="store_true",
                   help="after each reply, print the conversation as cached, evicted spans shown as '…'")
    p.add_argument("--json", metavar="PATH", default=None, help="also write every turn's result as JSON ('-' = stdout)")
    add_model_args(p)
    p.set_defaults(handler=run)


def _check_chat_args(args: argparse.Namespace) -> None:
    changes = {"memory_budget": args.budget, "policy": args.policy, "sink_tokens": args.sinks,
               "recent_window": args.window}
    try:  # validate before the (slow) model load
        MemoryConfig().replace(**{k: v for k, v in changes.items() if v is not None})
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature > 0):
        raise UsageError(f"--temperature must be a finite number > 0, got {args.temperature}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if args.file is not None:
        try:
            open(args.file, encoding="utf-8").close()
        except OSError as exc:
            raise UsageError(f"--file: cannot read {args.file!r}: {exc.strerror}") from None
    if args.system is not None and not args.system.strip():
        raise UsageError("--system must be a non-empty string")
    check_model_args(args)


def chat_lines(llm, lines: Iterable[str], *, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
               show_memory: bool = False, max_new_tokens: int = 64, prompt: str | None = None,
               sampling: dict[str, Any] | None = None, **options: Any) -> list[dict[str, Any]]:
    """Run a conversation: each non-blank line is a user turn; print every reply to ``out``
    (and, with ``show_memory``, what the cache still holds); a status line per turn to ``err``."""
    chat = llm.chat(**options)
    results = []
    for line in _turns(lines, prompt, err):
        r = chat.send(line, max_new_tokens=max_new_tokens, **(sampling or {}))
        results.append(r)
        print(r["generated_text"].strip(), file=out, flush=True)
        status = (f"[turn {r['turn']}] {r['num_tokens']} tokens, {r['tokens_per_second']:.1f} tok/s, "
                  f"KV cache {r['kv_cache_tokens']} of {r['conversation_tokens']} tokens")
        if "evicted_tokens" in r:
            status += f", {r['evicted_tokens']} evicted this turn"
        print(status, file=err, flush=True)
        if show_memory:
            print(f"[cached] {chat.memory_text()}", file=out, flush=True)
        print(file=out, flush=True)
    return results


def _turns(lines: Iterable[str], prompt: str | None, err: TextIO):
    it = iter(lines)
    while True:
        if prompt:
            print(prompt, end="", file=err, flush=True)
        try:
            line = next(it)
        except StopIteration:
            return
        line = line.rstrip("\n")
        if line.strip():
            yield line


def run(args: argparse.Namespace) -> int:
    _check_chat_args(args)
    llm = load_llm(args)
    options = dict(generation_mode=args.mode, memory_budget=args.budget, policy=args.policy,
                   sink_tokens=args.sinks, recent_window=args.window, system=args.system, seed=args.seed,
                   fmt=args.fmt)
    sampling = {"temperature": args.temperature} if args.temperature is not None else {}
    out = sys.stderr if args.json == "-" else sys.stdout
    if args.file is not None:
        with open(args.file, encoding="utf-8") as fh:
            results = chat_lines(llm, fh, out=out, show_memory=args.show_memory, max_new_tokens=args.max_tokens,
                                 sampling=sampling, **options)
    else:
        prompt = "you> " if sys.stdin.isatty() else None
        results = chat_lines(llm, sys.stdin, out=out, show_memory=args.show_memory, max_new_tokens=args.max_tokens,
                             prompt=prompt, sampling=sampling, **options)
    if args.json:
        text = json.dumps(results, indent=1, default=str)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
    return 0


# -- memollm eval recall --------------------------------------------------------------------------------
def add_recall_parser(esub) -> None:
    """``recall`` under ``memollm eval``'s subparsers."""
    from ..recall import FACT_KINDS, POLICIES_COMPARED

    choices = [p for p in POLICIES if p != "full"]
    default = ",".join(POLICIES_COMPARED)
    p = esub.add_parser("recall", help="recall of a fact from turn 1 at the end of a conversation, reviewed or not",
                        description="Seeded synthetic conversations: a fact in turn 1, small talk, an optional review, "
                                    "and the fact asked for at the end; accuracy and whether the fact is still "
                                    "cached, per policy, budget and variant, with bootstrap 95%% intervals.")
    p.add_argument("--budget", "--budgets", dest="budgets", type=int_list, default=[96],
                   help="KV-cache budgets in tokens (default: 96, a quarter of the ~380-token conversation)")
    p.add_argument("--policies", type=name_list(choices), default=name_list(choices)(default),
                   help=f"evicting policies, comma-separated (default: {default}); 'full' is always added")
    p.add_argument("--cases", type=positive_int, default=30, help="conversations per setting (default: 30)")
    p.add_argument("--variants", choices=("both", "reviewed", "not-reviewed"), default="both",
                   help="which variants to run (default: both)")
    p.add_argument("--turns", type=positive_int, default=10, help="small-talk exchanges (default: 10)")
    p.add_argument("--review-after", type=int, default=1,
                   help="small-talk exchanges between the fact and the review (default: 1)")
    p.add_argument("--kinds", type=name_list(list(FACT_KINDS)), default=list(FACT_KINDS),
                   help=f"fact kinds, cycled over the cases (default: {','.join(FACT_KINDS)})")
    p.add_argument("--sinks", type=int, default=None, help="attention-sink tokens kept (default: config, 4)")
    p.add_argument("--window", type=positive_int, default=16, help="recent tokens every policy keeps (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="seed for the conversations and the random policy (default: 0)")
    p.add_argument("--no-full", action="store_true",
                   help="skip the full-cache reference (e.g. a second budget for conversations already measured)")
    p.add_argument("--merge", metavar="PATH", default=None,
                   help="add this run to the records of an earlier --json file (e.g. a second budget); the tables "
                        "and figure then show both")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="write the records (one per conversation and policy) as JSON ('-' = stdout)")
    p.add_argument("--no-plot", action="store_true", help="do not write the figure (figures/eval_recall.png)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (on a busy 2-core machine, 1 avoids oversubscription and is far faster)")
    add_model_args(p)
    p.set_defaults(handler=run_recall)


def run_recall(args: argparse.Namespace) -> int:
    import torch

    from ..recall import recall, table

    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if not 0 <= args.review_after < args.turns:
        raise UsageError(f"--review-after must be in [0, --turns), got {args.review_after}")
    from ..config import MemoryConfig
    try:
        cfg = MemoryConfig().replace(**{k: v for k, v in (("sink_tokens", args.sinks), ("recent_window", args.window))
                                        if v is not None})
        for b in args.budgets:
            cfg.replace(memory_budget=b)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    check_output_path("--json", args.json)
    earlier = None
    if args.merge:
        try:
            with open(args.merge, encoding="utf-8") as fh:
                earlier = json.load(fh)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--merge: cannot read records from {args.merge!r}: {exc}") from None
        if not isinstance(earlier, list) or not all(isinstance(r, dict) and "policy" in r for r in earlier):
            raise UsageError(f"--merge: {args.merge!r} is not a list of recall records (a --json file)")
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = {"both": (False, True), "reviewed": (True,), "not-reviewed": (False,)}[args.variants]
    llm = load_llm(args)
    result = recall(llm, budgets=args.budgets, policies=args.policies, cases=args.cases, reviewed=variants,
                    seed=args.seed, turns=args.turns, review_after=args.review_after, kinds=args.kinds,
                    sink_tokens=args.sinks, recent_window=args.window, reference=not args.no_full)
    s = result["settings"]
    out = sys.stderr if args.json == "-" else sys.stdout
    print(f"recall over {s['cases']} conversations per setting ({s['mean_conversation_tokens']:.0f} tokens on "
          f"average; sinks {s['sink_tokens']}, window {s['recent_window']}), model {llm.model_name}; "
          f"{s['seconds']:.0f} s ({s['cpu_seconds']:.0f} s CPU)", file=out)
    if earlier is not None:
        from ..recall import merge

        result = merge(earlier, result)
        print(f"merged with the {len(earlier)} records of {args.merge}", file=out)
    print("\nanswer correct (95% bootstrap interval):", file=out)
    print(table(result, "accuracy"), file=out)
    print("\nthe fact from turn 1 still fully cached when the last question has been read:", file=out)
    print(table(result, "fact_cached"), file=out)
    if args.json:
        from ..recall import records_json

        text = records_json(result["records"])
        if args.json == "-":
            print(text, end="")
        else:
            from pathlib import Path

            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(text)
    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from ..viz import plot_recall as plot
        from ..viz import save_figure

        path = save_figure(plot(result), "eval_recall")
        print(f"figure: {path}", file=sys.stderr)
    return 0
