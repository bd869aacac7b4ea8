"""Long streams with stricter reviews: Ebbinghaus with higher reinforcement thresholds.

In a long stream the default Ebbinghaus policy hoards: a review resets a token's age, and in the
lower layers a few frequent tokens are reviewed by nearly every chunk, so they never fade (README,
"Long streams"). A higher ``review_threshold`` makes a review rarer. This runs
``memollm.evaluate.long_stream`` with positions inside the cache on the *tune* half of the text
(settings are chosen there, never on the half the README reports) and prints each variant's paired
difference to ``streaming`` over the windows.

    python scripts/stream_thresholds.py --thresholds 2,4,8 --budgets 256,1024 --threads 1   # ~25 min here
"""

from __future__ import annotations

import argparse
import json

import torch

from memollm import EbbinghausLLM
from memollm.evaluate import long_stream, stream_summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--thresholds", default="2,4,8", help="review_threshold values (default: 2,4,8; the default is 1)")
    p.add_argument("--budgets", default="256,1024", help="KV budgets in tokens (default: 256,1024)")
    p.add_argument("--tokens", type=int, default=20_000, help="tokens to stream (default: 20000)")
    p.add_argument("--chunk", type=int, default=64, help="tokens per step (default: 64)")
    p.add_argument("--split", choices=("tune", "report"), default="tune", help="half of the text (default: tune)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="write the records here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    llm = EbbinghausLLM()
    base = llm.config.replace(granularity="layer")
    variants = [(f"ebbinghaus_threshold_{t}", "ebbinghaus", base.replace(review_threshold=float(t)))
                for t in args.thresholds.split(",")]
    records = long_stream(llm, tokens=args.tokens, budgets=[int(b) for b in args.budgets.split(",")],
                          schemes=("cache",), policies=["streaming", "ebbinghaus", *variants], chunk=args.chunk,
                          split=args.split, config=base)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    print(f"{args.split} half, positions inside the cache, chunk {args.chunk}: minus streaming over all windows")
    for row in stream_summary(records, llm.max_positions):
        if row["vs_baseline"] is not None:
            d, low, high = row["vs_baseline"]
            print(f"budget {row['budget']:5}  {row['policy']:28s} {d:+.2f} [{low:+.2f}, {high:+.2f}]")


if __name__ == "__main__":
    main()
