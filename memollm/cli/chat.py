"""``memollm chat`` and ``memollm eval recall``: argument parsing and output only.

``add_parser(sub)`` / ``run(args)`` are the ``chat`` subcommand; ``add_recall_parser(esub)`` /
``run_recall(args)`` the ``recall`` evaluation, hung under ``memollm eval`` by ``cli.evaluate``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable, TextIO

from ..config import MODES, POLICIES
from .common import (UsageError, add_knob_args, add_model_args, check_knobs, check_model_args, check_output_path,
                     fraction_list, knobs_of, load_llm, name_list, positive_int, read_text_file, write_output)


# -- memollm chat ------------------------------------------------------------------------------------
def add_parser(sub) -> None:
    from ..template import FORMATS

    p = sub.add_parser("chat", help="a conversation with one bounded KV cache, turns read from stdin or a file",
                       description="Chat with the model: one turn per line (stdin or --file); the KV cache is kept "
                                   "across turns and, in evict mode, held to --budget tokens.")
    p.add_argument("--file", default=None, help="read the turns from this UTF-8 file, one per line (default: stdin)")
    p.add_argument("--mode", choices=MODES, default="evict", help="generation mode (default: evict)")
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
    add_knob_args(p)
    p.set_defaults(handler=run)


def _check_chat_args(args: argparse.Namespace) -> None:
    check_knobs(args, args.mode)
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
    options = dict(generation_mode=args.mode, system=args.system, seed=args.seed, fmt=args.fmt, **knobs_of(args))
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
        write_output(args.json, json.dumps(results, indent=1, default=str))
    return 0


# -- memollm eval recall --------------------------------------------------------------------------------
def add_recall_parser(esub) -> None:
    """``recall`` under ``memollm eval``'s subparsers: conversations, or with ``--stream`` a running text."""
    from ..evaluate.recall import BUDGET_FRACTIONS, POLICIES_COMPARED, RECENT_WINDOW, SPLITS
    from ..evaluate.recall_stream import BUDGET_FRACTIONS as STREAM_FRACTIONS, DEFAULT_LENGTH

    choices = [p for p in POLICIES if p != "full"]
    default = ",".join(POLICIES_COMPARED)
    fractions = lambda f: ",".join(map(str, f))  # noqa: E731
    p = esub.add_parser("recall", help="recall of 2-4 facts, reviewed 0, 1 or 2 times, at the end of a conversation "
                        "(or, with --stream, of a long running text)",
                        description="Seeded synthetic conversations: 2-4 facts stated at different turns, some asked "
                                    "about again once or twice, small talk, and every fact asked for at the end; "
                                    "answers and the share of each fact still cached, per policy, budget fraction "
                                    "and number of reviews, with 95%% intervals over conversations. With --stream "
                                    "the facts are stated early in a passage of running text instead, and asked "
                                    "for after it, many budgets later.")
    p.add_argument("--stream", action="store_true",
                   help="recall along a stream: facts stated in the first part of a passage of running text (docs "
                        "and prose passages of the split, or pieces of --text-file), asked for after it")
    p.add_argument("--length", type=positive_int, default=None,
                   help=f"with --stream: passage tokens per case, about (default: {DEFAULT_LENGTH})")
    p.add_argument("--text-file", default=None,
                   help="UTF-8 text whose consecutive pieces (of its first half for the report split, of its second "
                        "for tune) are the passages; implies --stream")
    p.add_argument("--budget-fractions", type=fraction_list(low_open=True, high_open=True), default=None,
                   help="KV-cache budgets as fractions of each case's length (default: "
                        f"{fractions(BUDGET_FRACTIONS)}; {fractions(STREAM_FRACTIONS)} with --stream)")
    p.add_argument("--policies", type=name_list(choices), default=name_list(choices)(default),
                   help=f"evicting policies, comma-separated (default: {default}); 'full' is always added")
    p.add_argument("--cases", type=positive_int, default=None,
                   help="conversations, or passages with --stream (default: 30; 16 with --stream)")
    p.add_argument("--split", choices=sorted(SPLITS), default="report",
                   help=f"conversations from id {SPLITS['report']} (report, default) or from id 0 (tune, for "
                        "choosing wording and settings): the two never overlap; with --stream, passages from the "
                        "report or the tune half of each text")
    p.add_argument("--turns", type=positive_int, default=None,
                   help="user turns before the final questions (default: 12; conversations only)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random policy and the bootstrap (default: 0)")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="write the records (one per policy, budget fraction, conversation or passage, and fact) "
                        "as JSON ('-' = stdout)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (on a busy 2-core machine, 1 avoids oversubscription and is far faster)")
    p.add_argument("--no-plot", action="store_true",
                   help="do not write figures/eval_recall.png (eval_recall_stream.png with --stream)")
    add_model_args(p)
    add_knob_args(p, skip=("memory_budget", "policy"), defaults={"recent_window": RECENT_WINDOW})
    p.set_defaults(handler=run_recall)


def _check_recall_args(args: argparse.Namespace) -> None:
    """Settle the mode and its defaults, and refuse a flag the mode does not read."""
    from ..evaluate.recall import BUDGET_FRACTIONS
    from ..evaluate.recall_stream import BUDGET_FRACTIONS as STREAM_FRACTIONS, DEFAULT_LENGTH

    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    args.stream = args.stream or args.text_file is not None
    if args.stream:
        if args.turns is not None:
            raise UsageError("--turns counts a conversation's turns: recall along a stream (--stream, --text-file) "
                             "has none; use --length")
        args.length = args.length or DEFAULT_LENGTH
        if args.length < 256:
            raise UsageError(f"--length must be >= 256 (room for four facts and their reviews), got {args.length}")
    else:
        if args.length is not None:
            raise UsageError("--length sets the passage of recall along a stream: add --stream")
        args.turns = args.turns or 12
        if args.turns < 8:
            raise UsageError(f"--turns must be >= 8 (room for 4 facts and their reviews), got {args.turns}")
    args.cases = args.cases or (16 if args.stream else 30)
    if args.budget_fractions is None:
        args.budget_fractions = list(STREAM_FRACTIONS if args.stream else BUDGET_FRACTIONS)
    check_knobs(args, "evict")
    check_output_path("--json", args.json)


def run_recall(args: argparse.Namespace) -> int:
    import torch

    from ..evaluate.recall import VALUES, recall, recall_table, records_json
    from ..evaluate.recall_stream import recall_stream

    _check_recall_args(args)
    text = read_text_file(args.text_file) if args.text_file else None
    if args.threads:
        torch.set_num_threads(args.threads)
    llm = load_llm(args)
    config = llm.config.replace(**knobs_of(args))  # recall's own window unless --window says
    out = sys.stderr if args.json == "-" else sys.stdout
    if args.stream:
        name = Path(args.text_file).name if args.text_file else "docs + prose"
        result = recall_stream(llm, budget_fractions=args.budget_fractions, policies=args.policies, cases=args.cases,
                               split=args.split, length=args.length, text=text, text_name=name, seed=args.seed,
                               recent_window=args.recent_window, config=config)
        s = result["settings"]
        print(f"recall along a stream over {s['cases']} {s['split']} passages of {name} ({s['mean_case_tokens']:.0f} "
              f"tokens on average with the facts and questions; granularity {s['granularity']}, sinks "
              f"{s['sink_tokens']}, window {s['recent_window']}), model {llm.model_name}; {s['seconds']:.0f} s "
              f"({s['cpu_seconds']:.0f} s CPU)", file=out)
        unit, figure = "passages", "eval_recall_stream"
    else:
        result = recall(llm, budget_fractions=args.budget_fractions, policies=args.policies, cases=args.cases,
                        split=args.split, seed=args.seed, turns=args.turns, recent_window=args.recent_window,
                        config=config)
        s = result["settings"]
        print(f"recall over {s['cases']} {s['split']} conversations ({s['mean_conversation_tokens']:.0f} tokens on "
              f"average; granularity {s['granularity']}, sinks {s['sink_tokens']}, window {s['recent_window']}), "
              f"model {llm.model_name}; {s['seconds']:.0f} s ({s['cpu_seconds']:.0f} s CPU)", file=out)
        unit, figure = "conversations", "eval_recall"
    for value, title in VALUES.items():
        print(f"\n{title}, by number of reviews (95% bootstrap interval of each mean over {unit}; paired "
              "differences with a Student-t interval):", file=out)
        print(recall_table(result, value), file=out)
    if args.json:
        write_output(args.json, records_json(result["records"]))
    if not args.no_plot:
        from ..viz import plot_recall, save_figure

        print(f"figure: {save_figure(plot_recall(result, unit=unit[:-1]), figure)}", file=out)
    return 0
