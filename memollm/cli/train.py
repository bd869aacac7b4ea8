"""``memollm train-strength``: fit a ``StrengthGate`` on the tune split and check it on the report split."""

from __future__ import annotations

import re
import time

import torch

from .common import UsageError, add_model_args, check_model_args, check_output_path, load_llm, positive_int


def add_parser(sub) -> None:
    """Register ``memollm train-strength`` on the CLI's subparsers."""
    p = sub.add_parser(
        "train-strength", help="train a learned strength gate (log S per token) for a model",
        description="Fit a StrengthGate on the tune half of the offline texts: one frozen pass per passage, "
                    "then full-batch Adam so that exp(-age/S) predicts which tokens later queries still read. "
                    "The same settings and seed on the same thread count write the same bytes.")
    p.add_argument("--passages", type=positive_int, default=24, help="tune passages, docs and prose (default: 24)")
    p.add_argument("--tokens", type=positive_int, default=512, help="tokens per passage (default: 512)")
    p.add_argument("--steps", type=positive_int, default=300, help="full-batch Adam steps (default: 300)")
    p.add_argument("--seed", type=int, default=0, help="seed of the targets and the fit (default: 0)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch CPU threads (default: 1; a different count may change the last bits)")
    p.add_argument("--out", metavar="PATH", default=None,
                   help="the gate file (default: <model>.safetensors here; the path is printed)")
    p.add_argument("--check-passages", type=int, default=2,
                   help="report passages of 512 tokens for the closing capture check (default: 2; 0 skips it)")
    add_model_args(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..evaluate.capture import capture, capture_table
    from ..training import train_strength

    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if args.check_passages < 0:
        raise UsageError(f"--check-passages must be >= 0, got {args.check_passages}")
    check_output_path("--out", args.out)
    check_model_args(args)
    torch.set_num_threads(args.threads)
    llm = load_llm(args)
    out = args.out or re.sub(r"[^a-z0-9.]+", "-", str(llm.model_name).lower().rsplit("/", 1)[-1]).strip("-") \
        + ".safetensors"
    print(f"train-strength: model {llm.model_name}, {args.passages} tune passages x {args.tokens} tokens, "
          f"{args.steps} steps, seed {args.seed}, {args.threads} thread(s)")
    start = time.perf_counter()
    gate = train_strength(llm, passages=args.passages, tokens=args.tokens, steps=args.steps, seed=args.seed)
    gate.save(out)
    print(f"wrote {out} ({gate.num_parameters:,} parameters) in {time.perf_counter() - start:.0f} s "
          f"(collect {gate.timing['collect_s']:.0f} s, fit {gate.timing['fit_s']:.0f} s); "
          f"BCE {gate.metadata['bce_initial']} -> {gate.metadata['bce_final']}")
    if args.check_passages:
        records = capture(llm, passages=args.check_passages, tokens=512, budgets=(64, 128),
                          policies=("streaming", "tova", "learned"), gate=gate)
        print(f"\nattention capture on {args.check_passages} report passages of 512 tokens:")
        print(capture_table(records))
    return 0
