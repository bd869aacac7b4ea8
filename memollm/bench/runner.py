"""Running the fair benchmark: warm-up, interleaved rounds, the machine it ran on.

``run_benchmark`` is the method the README and notebook 06 quote; ``run_naive`` is the
seed's method (one cold run per mode in fixed order), kept to show why it misleads.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from ..texts import context_prompt
from .report import bench_summary
from .timing import (DEFAULT_CONTEXTS, DEFAULT_NEW_TOKENS, DEFAULT_REPEATS, DEFAULT_WARMUP, Case, Run, make_cases,
                     measure_bandwidth, time_generation, weight_bytes)


@dataclass
class BenchResult:
    """Everything one ``run_benchmark`` call measured: records (medians), raw runs, machine."""

    records: list[dict[str, Any]]
    runs: list[Run]
    machine: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        method = self.records[0]["method"] if self.records else "fair"
        raw = [{**{k: v for k, v in asdict(r).items() if k not in ("case", "token_ids")},
                "method": method, "mode": r.case.mode, "policy": r.case.policy, "budget": r.case.budget,
                "label": r.case.label, "ms_per_token": r.ms_per_token} for r in self.runs]
        return {"machine": self.machine, "records": self.records, "runs": raw}


def machine_info(llm, bandwidth: float | None, threads: int | None = None) -> dict[str, Any]:
    device = llm.device
    info = {
        "model": llm.model_name,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        (platform.processor() or platform.machine()),
        "cpu_count": os.cpu_count(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "dtype": str(next(llm.model.parameters()).dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "weight_bytes": weight_bytes(llm.model),
        "bandwidth_bytes_per_second": bandwidth,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    quiet = os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    return tqdm(total=total, desc="bench", unit="run", disable=not enabled or quiet, leave=False, file=sys.stderr)


def run_benchmark(
    llm,
    contexts: Sequence[int] = DEFAULT_CONTEXTS,
    cases: Sequence[Case] | None = None,
    *,
    new_tokens: int = DEFAULT_NEW_TOKENS,
    repeats: int = DEFAULT_REPEATS,
    warmup: int = DEFAULT_WARMUP,
    bandwidth: float | None = None,
    text: str | None = None,
    progress: bool = True,
) -> BenchResult:
    """The fair benchmark: warm-up, then ``repeats`` interleaved rounds per context.

    Warm-up runs every case ``warmup`` times on a short prompt (untimed). Then round r runs
    every case once in order (A B C D) at every context, so neighbouring runs share the
    machine's state; records hold medians over the rounds and min/max as the spread.
    ``bandwidth`` (bytes/s) is measured here when not given.
    """
    cases = list(cases) if cases is not None else make_cases()
    if not cases:
        raise ValueError("no cases to run")
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    contexts = list(contexts)
    device = llm.device
    if bandwidth is None:
        bandwidth = measure_bandwidth(device)
    prompts = {n: context_prompt(llm.tokenizer, n, text) for n in contexts}
    short = context_prompt(llm.tokenizer, min(128, min(contexts)), text)
    bar = _progress(warmup * len(cases) + repeats * len(contexts) * len(cases), progress)
    runs: list[Run] = []
    try:
        for _ in range(warmup):
            for case in cases:
                bar.set_postfix_str(f"warm-up {case.label}")
                time_generation(llm, short, case, min(new_tokens, 8))
                bar.update(1)
        for r in range(repeats):  # each round covers every context, so ratios across contexts pair up too
            for n in contexts:
                for case in cases:
                    bar.set_postfix_str(f"round {r + 1}/{repeats}, {n} tokens, {case.label}")
                    runs.append(time_generation(llm, prompts[n], case, new_tokens, repeat=r))
                    bar.update(1)
    finally:
        bar.close()
    machine = machine_info(llm, bandwidth)
    return BenchResult(records=bench_summary(runs, machine, method="fair"), runs=runs, machine=machine)


def run_naive(
    llm,
    context: int = 128,
    cases: Sequence[Case] | None = None,
    *,
    new_tokens: int = 50,
    text: str | None = None,
    bandwidth: float | None = None,
) -> BenchResult:
    """The seed's way: each mode once, cold (no warm-up), in fixed order, tok/s including the
    prefill. Run it first in a fresh process to reproduce the artefact: whichever mode runs
    first pays the one-time start-up costs."""
    cases = list(cases) if cases is not None else make_cases()
    prompt = context_prompt(llm.tokenizer, context, text)
    runs = [time_generation(llm, prompt, case, new_tokens) for case in cases]
    machine = machine_info(llm, bandwidth)
    return BenchResult(records=bench_summary(runs, machine, method="naive"), runs=runs, machine=machine)


RANDOM_INIT = {
    # Qwen2.5-0.5B-Instruct's architecture (config.json on the hub), for timing without weights.
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=True),
}


def random_init_llm(arch: str, device="auto", dtype="auto"):
    """An ``EbbinghausLLM`` with random weights of a known architecture and the bundled tokenizer
    (same timings as the real weights for a fixed number of tokens; the text is noise)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from ..llm import EbbinghausLLM
    from ..models import auto_device, auto_dtype, load_model

    if arch not in RANDOM_INIT:
        raise ValueError(f"--random-init must be one of {sorted(RANDOM_INIT)}, got {arch!r}")
    spec = dict(RANDOM_INIT[arch])
    spec.pop("model_type")
    dev = auto_device(device)
    dt = auto_dtype(dev, dtype)
    tokenizer = load_model(None, device="cpu").tokenizer
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**spec), attn_implementation="sdpa", dtype=dt)
    return EbbinghausLLM(f"{arch} (random init)", model=model.to(dev).eval(), tokenizer=tokenizer)
