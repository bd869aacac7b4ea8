"""``memollm bench``: argument parsing and output for the fair benchmark (``memollm.bench``)."""

from __future__ import annotations

import json

import torch

from ..bench.report import format_markdown, format_table, format_targets, records_csv, results_json, targets
from ..bench.runner import RANDOM_INIT, random_init_llm, run_benchmark, run_naive
from ..bench.timing import (DEFAULT_BUDGET, DEFAULT_CONTEXTS, DEFAULT_NEW_TOKENS, DEFAULT_POLICIES, DEFAULT_REPEATS,
                            DEFAULT_WARMUP, make_cases, measure_bandwidth)
from ..config import GRANULARITIES, MODES, POLICIES
from ..viz import save_bench_plots
from .common import (UsageError, add_model_args, int_list, load_llm, name_list, out_stream, positive_int,
                     write_output)


def add_parser(sub) -> None:
    """Register ``memollm bench`` on the CLI's subparsers."""
    p = sub.add_parser(
        "bench", help="fair speed and memory benchmark of every mode",
        description="Time every generation mode fairly: warm-up, interleaved repeats, medians and spread, "
                    "EOS ignored, prefill and decode separately, peak memory, KV bytes, a bandwidth bound.")
    p.add_argument("--contexts", type=int_list, default=list(DEFAULT_CONTEXTS),
                   help="prompt lengths in tokens (default: %(default)s)")
    p.add_argument("--new-tokens", "--new_tokens", dest="new_tokens", type=positive_int,
                   default=DEFAULT_NEW_TOKENS, help="new tokens per run, EOS ignored (default: %(default)s)")
    p.add_argument("--repeats", type=positive_int, default=DEFAULT_REPEATS,
                   help="interleaved timed rounds per context (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                   help="untimed warm-up runs per case on a short prompt (default: %(default)s)")
    p.add_argument("--modes", type=name_list(MODES), default=list(MODES),
                   help=f"comma-separated modes (default: {','.join(MODES)})")
    p.add_argument("--budget", "--budgets", dest="budget", type=int_list, default=[DEFAULT_BUDGET],
                   help="KV budget(s) in tokens for evict (default: %(default)s)")
    p.add_argument("--policies", type=name_list(sorted(POLICIES)), default=list(DEFAULT_POLICIES),
                   help=f"eviction policies for evict (default: {','.join(DEFAULT_POLICIES)})")
    p.add_argument("--granularity", type=name_list(GRANULARITIES), default=["auto"],
                   help="evict granularities to time, comma-separated (default: auto = layer)")
    add_model_args(p)
    p.add_argument("--random-init", default=None, choices=sorted(RANDOM_INIT),
                   help="time a randomly initialised model of this architecture (no weights needed)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--naive", action="store_true",
                   help="first time each mode once, cold, in fixed order (the seed's method), then the fair run")
    p.add_argument("--naive-context", type=positive_int, default=128,
                   help="prompt tokens of the naive runs (default: %(default)s)")
    p.add_argument("--json", metavar="PATH", default=None, help="write records and raw runs as JSON ('-': stdout)")
    p.add_argument("--csv", metavar="PATH", default=None, help="write one CSV row per record ('-': stdout)")
    p.add_argument("--no-plots", action="store_true", help="do not write figures/bench_*.png")
    p.add_argument("--plot-prefix", default="bench", help="figure name prefix (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--markdown", action="store_true", help="print the tables as markdown (for a README)")
    p.add_argument("--replot", metavar="JSON", default=None,
                   help="run nothing: print the tables and redraw the figures of a saved --json file")
    p.set_defaults(handler=run_bench)


def run_bench(args) -> int:
    if args.replot:
        return _replot(args)
    if args.new_tokens < 2:
        raise UsageError("--new-tokens must be >= 2 (decode speed needs at least two tokens)")
    if args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    cases = make_cases(args.modes, args.policies, args.budget, args.granularity)
    if args.threads:
        torch.set_num_threads(args.threads)
    llm = random_init_llm(args.random_init, args.device, args.dtype) if args.random_init else load_llm(args)
    limit = llm.max_positions
    if limit is not None and max(args.contexts) + args.new_tokens > limit:
        raise UsageError(f"context {max(args.contexts)} + {args.new_tokens} new tokens exceeds the model's "
                         f"{limit} positions")
    results = []
    if args.naive:  # before anything else runs in this process, so the first mode is truly cold
        naive = run_naive(llm, args.naive_context, cases, new_tokens=args.new_tokens)
        results.append(naive)
    bandwidth = measure_bandwidth(llm.device)
    fair = run_benchmark(llm, args.contexts, cases, new_tokens=args.new_tokens, repeats=args.repeats,
                         warmup=args.warmup, bandwidth=bandwidth, progress=not args.quiet)
    results.append(fair)
    m = fair.machine
    out = out_stream(args.json, args.csv)
    print(f"memollm bench: {m['model']} on {m['device']} ({m['device_name']}, {m['threads']} threads), "
          f"{m['dtype']}, weights {m['weight_bytes'] / 1e6:.0f} MB, measured bandwidth "
          f"{bandwidth / 1e9:.1f} GB/s", file=out)
    if args.naive:
        print("\nNaive (seed-style): one cold run per mode in fixed order, tok/s including the prefill "
              "-- do not trust:", file=out)
        print((format_markdown if args.markdown else format_table)(naive.records, naive=True), file=out)
    print(f"\nFair: {args.warmup} warm-up run(s) per case, {args.repeats} interleaved rounds, medians; "
          f"{args.new_tokens} new tokens, EOS ignored; tok/s = decode; x base = median ratio to baseline "
          f"in the same round; x bound = ms/tok over (weights + KV bytes) / bandwidth", file=out)
    print((format_markdown if args.markdown else format_table)(fair.records), file=out)
    goals = targets(fair.records, args.budget[0], fair.to_json()["runs"])
    if goals:
        print("\nBounds, as ratios measured in this run:", file=out)
        print(format_targets(goals), file=out)
    records = [r for res in results for r in res.records]
    if args.json:
        write_output(args.json, results_json(results))
    if args.csv:
        write_output(args.csv, records_csv(records))
    if not args.no_plots:
        paths = save_bench_plots(fair.records, args.plot_prefix)
        print("\nfigures: " + ", ".join(paths), file=out)
    return 0


def _replot(args) -> int:
    try:
        with open(args.replot) as fh:
            data = json.load(fh)
        records, machine = data["records"], data["machine"]
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"--replot: cannot read {args.replot!r} ({exc})") from None
    naive = [r for r in records if r.get("method") == "naive"]
    fair = [r for r in records if r.get("method") != "naive"]
    print(f"from {args.replot}: {machine.get('model')} on {machine.get('device')} "
          f"({machine.get('device_name')}, {machine.get('threads')} threads), {machine.get('date_utc')}")
    table = format_markdown if args.markdown else format_table
    if naive:
        print(table(naive, naive=True) + "\n")
    print(table(fair))
    goals = targets(fair, args.budget[0], data.get("runs"))
    if goals:
        print("\nBounds, as ratios measured in that run:\n" + format_targets(goals))
    if not args.no_plots and fair:
        print("\nfigures: " + ", ".join(save_bench_plots(fair, args.plot_prefix)))
    return 0

