"""Peak memory of reading a long document with a small cache, in one pass or in chunks.

Each way runs in a fresh process (peak RSS is a process high-water mark): a document of
``--tokens`` tokens from CPython's reference docs, ``generate(..., "evict", memory_budget=B)``
with and without ``prefill_chunk``. Prints the peak KV-cache tokens and bytes the session saw,
and the process's peak resident memory, for the README's table.

    python scripts/prefill_memory.py --tokens 7500 --budget 512 --chunk 256 --threads 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def one(tokens: int, budget: int, chunk: int | None, threads: int) -> dict:
    import torch

    from memollm import EbbinghausLLM
    from memollm.texts import context_prompt

    torch.set_num_threads(threads)
    llm = EbbinghausLLM()
    prompt = context_prompt(llm.tokenizer, tokens)
    r = llm.generate(prompt, 8, "evict", chat=False, memory_budget=budget, prefill_chunk=chunk, ignore_eos=True)
    per_token = r["kv_cache_bytes"] // max(1, r["kv_cache_tokens"])
    return {"way": f"chunks of {chunk}" if chunk else "one pass", "prompt_tokens": r["prompt_tokens"],
            "peak_kv_tokens": r["peak_kv_cache_tokens"], "peak_kv_mib": r["peak_kv_cache_tokens"] * per_token / 2**20,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "seconds": r["generation_time"], "text": r["generated_text"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=7500)
    p.add_argument("--budget", type=int, default=512)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--one", choices=("whole", "chunked"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.tokens, args.budget, args.chunk if args.one == "chunked" else None, args.threads)))
        return
    rows = []
    for way in ("whole", "chunked"):
        out = subprocess.run([sys.executable, __file__, "--one", way, "--tokens", str(args.tokens), "--budget",
                              str(args.budget), "--chunk", str(args.chunk), "--threads", str(args.threads)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"| way of reading ({rows[0]['prompt_tokens']} tokens, budget {args.budget}) | peak KV tokens | "
          "peak KV MiB | peak RSS MiB | seconds |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['way']} | {r['peak_kv_tokens']} | {r['peak_kv_mib']:.1f} | {r['peak_rss_mib']:.0f} | "
              f"{r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
