"""A generation far past the model's context window with a flat cache (StreamingLLM positions).

Generates ``--tokens`` new tokens with ``generate(..., "evict", memory_budget=B,
positions="cache")`` (sampled, EOS ignored) and records, every ``--every`` tokens, the
process's resident memory, the KV-cache tokens and bytes, and the elapsed time. Writes a JSON
file with that series and a sample of the text generated after position ``--sample-at``
(8,192 = SmolLM2's trained context), for the README.

    python scripts/long_generation.py --tokens 20000 --budget 512 --threads 1 \
        --json figures/long_generation.json
"""

from __future__ import annotations

import argparse
import json
import os
import time


def rss_mib() -> float:
    """Current resident memory of this process (Linux), in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class Recorder:
    """A streamer that samples memory every ``every`` new tokens (it only reads, never generates)."""

    def __init__(self, trace: dict, every: int) -> None:
        self.trace, self.every, self.count, self.rows, self.start = trace, every, -1, [], time.perf_counter()

    def put(self, value) -> None:
        self.count += value.shape[-1] if self.count >= 0 else 1  # the first call is the prompt
        if self.count % self.every == 0:
            tokens = self.trace["kv_cache_tokens"]
            self.rows.append({"new_tokens": self.count, "rss_mib": round(rss_mib(), 1),
                              "kv_cache_tokens": tokens[-1] if tokens else 0,
                              "kv_cache_mib": round(self.trace["kv_cache_bytes"][-1] / 2**20, 2) if tokens else 0,
                              "seconds": round(time.perf_counter() - self.start, 1)})
            print(json.dumps(self.rows[-1]), flush=True)

    def end(self) -> None:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=20000)
    p.add_argument("--budget", type=int, default=512)
    p.add_argument("--every", type=int, default=500)
    p.add_argument("--sample-at", type=int, default=8192, help="position where the quoted sample starts")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help="HF's penalty over every token seen so far (default: none; over thousands of tokens "
                        "it penalises nearly the whole vocabulary and pushes sampling to rare tokens)")
    p.add_argument("--json", default="long_generation.json")
    args = p.parse_args()

    import torch

    from memollm import EbbinghausLLM
    from memollm.lessons import kv_trace

    torch.set_num_threads(args.threads)
    llm = EbbinghausLLM()
    prompt = "Write a very long story about a lighthouse keeper and the ships she guides, chapter by chapter."
    with kv_trace(llm.model) as trace:
        rec = Recorder(trace, args.every)
        r = llm.generate(prompt, args.tokens, "evict", memory_budget=args.budget, positions="cache",
                         temperature=args.temperature, top_p=0.95, repetition_penalty=args.repetition_penalty,
                         seed=args.seed,
                         ignore_eos=True, streamer=rec)
    ids = r["token_ids"]
    start = max(0, args.sample_at - r["prompt_tokens"])
    out = {"command": "python scripts/long_generation.py " + " ".join(
               f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
           "model": llm.model_name, "budget": args.budget, "positions": "cache", "policy": r["config"]["policy"],
           "prompt_tokens": r["prompt_tokens"], "new_tokens": r["num_tokens"],
           "seconds": round(r["generation_time"], 1), "tokens_per_second": round(r["tokens_per_second"], 2),
           "peak_kv_cache_tokens": r["peak_kv_cache_tokens"], "max_kv_tokens_after_prefill": max(trace["kv_cache_tokens"]),
           "warnings": r["warnings"], "series": rec.rows,
           "sample_after": args.sample_at, "sample": llm.tokenizer.decode(ids[start:start + 200]),
           "samples": {str(r["prompt_tokens"] + i): llm.tokenizer.decode(ids[i:i + 120])
                       for i in range(0, len(ids), 4000)},
           "token_ids": ids}
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k not in ("series", "token_ids")}, indent=1))


if __name__ == "__main__":
    main()
