"""A fair benchmark of speed and memory for every generation mode: ``memollm bench``.

The seed's table (soft delete "1.9x faster" than baseline) came from timing each mode once,
cold, in a fixed order, so the first mode paid the warm-up. Here every case does the same
work (a fixed number of new tokens, EOS ignored, greedy), runs after a warm-up, and is
repeated in interleaved order (A B C D A B C D ...) so slow phases of a shared machine hit
every case alike; the table reports medians and the spread, and speed-ups are the median of
the per-repeat ratios to the baseline run of the same repeat.

What one timed run measures (``time_generation``):

* ``prefill_seconds``: time to the first new token (the prompt's forward pass plus the
  first sampling step), read from a streamer that ``model.generate`` calls once per token;
* ``ms_per_token``: decode time per token after the first; ``tokens_per_second`` is its
  inverse (decode throughput), ``end_to_end_tokens_per_second`` counts the prefill too
  (the seed's number: tokens / generation time);
* ``peak_memory_bytes``: peak resident set size of the process during the run on CPU
  (Linux: VmHWM, reset before the run), ``torch.cuda.max_memory_allocated`` on a GPU;
* ``kv_cache_bytes``: bytes of keys and values held in the cache at the end.

The bound column divides the bytes one decode step must at least read (the weights plus
the KV cache) by the memory bandwidth measured in the same run; ``bound_ratio`` says how
far the achieved ms/token is from that floor. On a GPU every clock read is preceded by
``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import torch

from .memory import MODES, MemoryConfig

DEFAULT_CONTEXTS = (128, 1024, 7500)  # the quick default; add 4096 for the README table
DEFAULT_NEW_TOKENS = 32
DEFAULT_REPEATS = 3
DEFAULT_WARMUP = 1
DEFAULT_BUDGET = 512
DEFAULT_POLICIES = ("ebbinghaus",)  # add streaming (etc.) with --policies

RECORD_FIELDS = (
    "method", "mode", "policy", "budget", "label", "context_tokens", "new_tokens", "repeats",
    "tokens_per_second", "tokens_per_second_min", "tokens_per_second_max",
    "ms_per_token", "ms_per_token_min", "ms_per_token_max", "spread",
    "prefill_seconds", "prefill_seconds_min", "prefill_seconds_max",
    "end_to_end_tokens_per_second", "speedup_vs_baseline", "peak_memory_bytes", "kv_cache_bytes",
    "kv_cache_tokens", "bound_ms_per_token", "bound_ratio", "model", "device", "dtype", "threads",
    "bandwidth_bytes_per_second",
)


# -- what to run --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One configuration to time: a mode, and for ``evict`` a policy and a budget."""

    mode: str
    policy: str | None = None
    budget: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "evict":
            MemoryConfig(memory_budget=self.budget or DEFAULT_BUDGET, policy=self.policy or "ebbinghaus")
        elif self.policy is not None or self.budget is not None:
            raise ValueError(f"policy and budget apply to evict only, not to {self.mode!r}")

    @property
    def label(self) -> str:
        return f"evict/{self.policy}/{self.budget}" if self.mode == "evict" else self.mode

    def generate_kwargs(self) -> dict[str, Any]:
        return {"memory_budget": self.budget, "policy": self.policy} if self.mode == "evict" else {}


def make_cases(modes: Sequence[str] = MODES, policies: Sequence[str] = ("ebbinghaus",),
               budgets: Sequence[int] = (DEFAULT_BUDGET,)) -> list[Case]:
    """Baseline first (every ratio needs it), then the other modes; evict once per policy and budget."""
    ordered = sorted(dict.fromkeys(modes), key=lambda m: MODES.index(m) if m in MODES else len(MODES))
    cases: list[Case] = []
    for mode in ordered:
        if mode == "evict":
            cases += [Case("evict", p, b) for b in budgets for p in dict.fromkeys(policies)]
        else:
            cases.append(Case(mode))
    return cases


# -- the prompt ---------------------------------------------------------------------------------
def bench_text() -> str:
    """A long real English text shipped with every Python: the pydoc topic help (~110K tokens)."""
    from pydoc_data import topics

    return "\n\n".join(topics.topics[key] for key in sorted(topics.topics))


def context_prompt(tokenizer, n_tokens: int, text: str | None = None) -> str:
    """A raw prompt of (about) ``n_tokens`` tokens cut from ``text``; repeats the text if short.

    Decoding a prefix of the tokens and encoding it again may merge tokens at the cut, so the
    cut is nudged until the re-encoded prompt has exactly ``n_tokens`` where possible.
    """
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    text = text if text is not None else bench_text()
    if not text.strip():
        raise ValueError("the benchmark text is empty")
    while len(text) < 8 * (n_tokens + 16):  # a short text is repeated (~4 characters per token)
        text = text + "\n\n" + text
    ids = tokenizer(text, add_special_tokens=False).input_ids
    count = lambda prompt: len(tokenizer(prompt).input_ids)  # noqa: E731 (special tokens included)
    k = n_tokens
    best, best_gap = None, None
    for _ in range(8):  # re-encoding the decoded cut may merge tokens: steer the cut until it fits
        k = max(1, min(k, len(ids)))
        prompt = tokenizer.decode(ids[:k])
        got = count(prompt)
        if best_gap is None or abs(got - n_tokens) < best_gap:
            best, best_gap = prompt, abs(got - n_tokens)
        if got == n_tokens:
            break
        k += n_tokens - got
    return best


# -- clocks and memory ------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TokenClock:
    """A ``generate`` streamer that reads the clock when each new token reaches the host.

    ``model.generate`` first puts the prompt, then every new token; the times of the
    new tokens give the time to the first token (prefill) and the decode time per token.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        _sync(self.device)
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def _vm_hwm() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            found = re.search(r"VmHWM:\s+(\d+)\s+kB", fh.read())
        return int(found.group(1)) * 1024 if found else None
    except OSError:
        return None


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak memory during a ``with`` block: CUDA max allocated, else peak RSS of the process.

    On Linux the kernel's high-water mark (VmHWM) is reset through ``/proc/self/clear_refs``
    before the block; where that is not possible a thread samples the RSS every 2 ms.
    ``kind`` says which was used.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak: int | None = None
        self.kind = "none"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_max_memory_allocated"
            return self
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.kind = "rss_vmhwm"
            return self
        except OSError:
            pass
        if _rss() is not None:
            self.kind = "rss_sampled"
            self.peak = _rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            value = _rss()
            if value is not None and (self.peak is None or value > self.peak):
                self.peak = value

    def __exit__(self, *exc) -> None:
        if self.kind == "cuda_max_memory_allocated":
            _sync(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        elif self.kind == "rss_vmhwm":
            self.peak = _vm_hwm()
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()


def measure_bandwidth(device: torch.device | str = "cpu", megabytes: int = 256, repeats: int = 5) -> float:
    """Memory bandwidth in bytes/s: best of ``repeats`` copies of a ``megabytes`` buffer
    (a copy reads and writes every byte, so it moves twice the buffer)."""
    device = torch.device(device)
    n = megabytes * 2**20 // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch outside the clock
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    del src, dst
    return 2 * n * 4 / best


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters (tied weights counted once) and buffers: read once per decode step."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return params + sum(b.numel() * b.element_size() for b in model.buffers())


# -- one timed generation ---------------------------------------------------------------------
@dataclass
class Run:
    """One timed generation (raw numbers, before medians)."""

    case: Case
    context_tokens: int
    new_tokens: int
    repeat: int
    prefill_seconds: float
    decode_seconds: float
    total_seconds: float
    peak_memory_bytes: int | None
    kv_cache_bytes: int
    kv_cache_tokens: int
    token_ids: list[int] = field(repr=False, default_factory=list)

    @property
    def ms_per_token(self) -> float:
        return 1000.0 * self.decode_seconds / max(1, self.new_tokens - 1)

    @property
    def tokens_per_second(self) -> float:
        return 1000.0 / self.ms_per_token if self.ms_per_token > 0 else math.inf

    @property
    def end_to_end_tokens_per_second(self) -> float:
        return self.new_tokens / self.total_seconds if self.total_seconds > 0 else math.inf


def time_generation(llm, prompt: str, case: Case, new_tokens: int, repeat: int = 0) -> Run:
    """Generate ``new_tokens`` tokens (greedy, EOS ignored, raw prompt) and time them."""
    if new_tokens < 2:
        raise ValueError("new_tokens must be >= 2 (one token for the prefill, the rest for decode)")
    device = llm.device
    clock = TokenClock(device)
    with PeakMemory(device) as peak:
        _sync(device)
        start = time.perf_counter()
        result = llm.generate(prompt, new_tokens, case.mode, chat=False, ignore_eos=True, do_sample=False,
                              streamer=clock, **case.generate_kwargs())
        _sync(device)
        end = time.perf_counter()
    times = clock.times
    if result["num_tokens"] != new_tokens or len(times) != new_tokens:
        raise RuntimeError(f"{case.label}: expected {new_tokens} new tokens, got {result['num_tokens']} "
                           f"({len(times)} reached the clock)")
    return Run(case=case, context_tokens=int(result["prompt_tokens"]), new_tokens=new_tokens, repeat=repeat,
               prefill_seconds=times[0] - start, decode_seconds=times[-1] - times[0], total_seconds=end - start,
               peak_memory_bytes=peak.peak, kv_cache_bytes=int(result["kv_cache_bytes"]),
               kv_cache_tokens=int(result["kv_cache_tokens"]), token_ids=list(result["token_ids"]))


# -- the benchmark -----------------------------------------------------------------------------
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
    return BenchResult(records=summarize(runs, machine, method="fair"), runs=runs, machine=machine)


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
    return BenchResult(records=summarize(runs, machine, method="naive"), runs=runs, machine=machine)


def _median(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else math.nan


def summarize(runs: Sequence[Run], machine: dict[str, Any], method: str = "fair") -> list[dict[str, Any]]:
    """One record per case and context: medians over repeats, min/max, ratios to baseline.

    ``speedup_vs_baseline`` is the median over rounds of baseline ms/token divided by the
    case's ms/token in the same round (> 1: faster than baseline).
    """
    groups: dict[tuple[Case, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.case, run.context_tokens), []).append(run)
    bandwidth = machine.get("bandwidth_bytes_per_second")
    weights = machine.get("weight_bytes") or 0
    records = []
    for (case, ctx), group in groups.items():
        base = {r.repeat: r for r in groups.get((Case("baseline"), ctx), [])}
        ratios = [base[r.repeat].ms_per_token / r.ms_per_token for r in group if r.repeat in base]
        ms = [r.ms_per_token for r in group]
        tps = [r.tokens_per_second for r in group]
        prefill = [r.prefill_seconds for r in group]
        med_ms = _median(ms)
        kv_bytes = group[-1].kv_cache_bytes
        bound = 1000.0 * (weights + kv_bytes) / bandwidth if bandwidth else None
        peaks = [r.peak_memory_bytes for r in group if r.peak_memory_bytes is not None]
        records.append({
            "method": method,
            "mode": case.mode,
            "policy": case.policy,
            "budget": case.budget,
            "label": case.label,
            "context_tokens": ctx,
            "new_tokens": group[0].new_tokens,
            "repeats": len(group),
            "tokens_per_second": 1000.0 / med_ms if med_ms > 0 else math.inf,  # = median tok/s for odd repeats
            "tokens_per_second_min": min(tps),
            "tokens_per_second_max": max(tps),
            "ms_per_token": med_ms,
            "ms_per_token_min": min(ms),
            "ms_per_token_max": max(ms),
            "spread": (max(ms) - min(ms)) / med_ms if med_ms else math.nan,
            "prefill_seconds": _median(prefill),
            "prefill_seconds_min": min(prefill),
            "prefill_seconds_max": max(prefill),
            "end_to_end_tokens_per_second": _median(r.end_to_end_tokens_per_second for r in group),
            "speedup_vs_baseline": _median(ratios) if ratios else None,
            "peak_memory_bytes": max(peaks) if peaks else None,
            "kv_cache_bytes": kv_bytes,
            "kv_cache_tokens": group[-1].kv_cache_tokens,
            "bound_ms_per_token": bound,
            "bound_ratio": med_ms / bound if bound else None,
            "model": machine.get("model"),
            "device": machine.get("device"),
            "dtype": machine.get("dtype"),
            "threads": machine.get("threads"),
            "bandwidth_bytes_per_second": bandwidth,
        })
    return records


# -- targets ----------------------------------------------------------------------------------------
def _paired(runs: Sequence[dict[str, Any]], a: tuple[str, int], b: tuple[str, int]) -> float | None:
    """Median over rounds of ms/token of ``a`` divided by ms/token of ``b`` in the same round."""
    ms: dict[tuple[str, int, int], float] = {}
    for r in runs:
        label = r.get("label") or (f"evict/{r['policy']}/{r['budget']}" if r["mode"] == "evict" else r["mode"])
        ms[(label, r["context_tokens"], r["repeat"])] = r["ms_per_token"]
    ratios = [ms[(*a, k)] / ms[(*b, k)] for (lab, ctx, k) in ms if (lab, ctx) == a and (*b, k) in ms]
    return statistics.median(ratios) if ratios else None


def targets(records: Sequence[dict[str, Any]], budget: int = DEFAULT_BUDGET,
            runs: Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The project's speed targets (issue 4), each as a measured ratio, where the records hold
    what it needs: bookkeeping costs at 1024 tokens, eviction's speed-up and memory cut at the
    longest context, flat eviction cost across contexts, Ebbinghaus scoring against streaming.

    With the raw ``runs`` (dicts with ``label``, ``context_tokens``, ``repeat``, ``ms_per_token``,
    as in the JSON output) the last two are paired per round; otherwise ratios of medians."""
    fair = [r for r in records if r.get("method", "fair") == "fair"]
    runs = [r for r in (runs or []) if r.get("method", "fair") == "fair"]
    at = {(r["label"], r["context_tokens"]): r for r in fair}
    contexts = sorted({r["context_tokens"] for r in fair})
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, goal: str, ok: bool | None) -> None:
        out.append({"target": name, "value": value, "goal": goal, "met": ok})

    mid = min(contexts, key=lambda c: abs(c - 1024)) if contexts else None
    for mode in ("soft_delete", "sparse_attention"):
        r = at.get((mode, mid))
        if r and r["speedup_vs_baseline"] is not None and abs(mid - 1024) <= 64:
            add(f"{mode} tok/s / baseline at {mid} tokens", r["speedup_vs_baseline"], ">= 0.85",
                r["speedup_vs_baseline"] >= 0.85)
    ebb, stream = f"evict/ebbinghaus/{budget}", f"evict/streaming/{budget}"
    if contexts:
        top = contexts[-1]
        e, b = at.get((ebb, top)), at.get(("baseline", top))
        if e and b and top > budget:
            add(f"evict tok/s / baseline at {top} tokens", e["speedup_vs_baseline"], ">= 1.5",
                e["speedup_vs_baseline"] >= 1.5)
            add(f"baseline KV bytes / evict KV bytes at {top} tokens", b["kv_cache_bytes"] / e["kv_cache_bytes"],
                ">= 14", b["kv_cache_bytes"] / e["kv_cache_bytes"] >= 14)
        e_mid = at.get((ebb, mid))
        if e and e_mid and mid != top and mid >= budget:
            ratio = _paired(runs, (ebb, mid), (ebb, top)) or e["tokens_per_second"] / e_mid["tokens_per_second"]
            add(f"evict tok/s at {top} / at {mid} tokens", ratio, ">= 0.9", ratio >= 0.9)
        for c in contexts:
            e, s = at.get((ebb, c)), at.get((stream, c))
            if e and s:
                cost = _paired(runs, (ebb, c), (stream, c)) or e["ms_per_token"] / s["ms_per_token"]
                add(f"ebbinghaus ms/token / streaming at {c} tokens", cost, "<= 1.10", cost <= 1.10)
    return out


def format_targets(rows: Sequence[dict[str, Any]]) -> str:
    return "\n".join(f"{'met ' if r['met'] else 'MISS'}  {r['target']:<50} {r['value']:>6.2f}  (target {r['goal']})"
                     for r in rows)


# -- output --------------------------------------------------------------------------------------
def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f}"


def format_table(records: Sequence[dict[str, Any]], naive: bool = False) -> str:
    """An aligned text table; ``naive`` shows the seed's single cold tok/s (prefill included)."""
    if naive:
        head = f"{'mode':<24} {'context':>7} {'tokens':>6} {'tok/s (seed-style)':>18} {'seconds':>8}"
        lines = [head, "-" * len(head)]
        for r in records:
            lines.append(f"{r['label']:<24} {r['context_tokens']:>7} {r['new_tokens']:>6} "
                         f"{r['end_to_end_tokens_per_second']:>18.2f} {r['new_tokens'] / r['end_to_end_tokens_per_second']:>8.2f}")
        return "\n".join(lines)
    head = (f"{'mode':<24} {'context':>7} {'tok/s':>7} {'min-max':>11} {'ms/tok':>7} {'x base':>6} "
            f"{'prefill s':>9} {'peak MB':>8} {'KV MB':>7} {'bound ms':>8} {'x bound':>7}")
    lines = [head, "-" * len(head)]
    for r in sorted(records, key=lambda r: (r["context_tokens"], MODES.index(r["mode"]))):
        speed = "-" if r["speedup_vs_baseline"] is None else f"{r['speedup_vs_baseline']:.2f}"
        spread = f"{r['tokens_per_second_min']:.1f}-{r['tokens_per_second_max']:.1f}"
        bound = "-" if r["bound_ms_per_token"] is None else f"{r['bound_ms_per_token']:.1f}"
        ratio = "-" if r["bound_ratio"] is None else f"{r['bound_ratio']:.1f}"
        lines.append(f"{r['label']:<24} {r['context_tokens']:>7} {r['tokens_per_second']:>7.1f} {spread:>11} "
                     f"{r['ms_per_token']:>7.1f} {speed:>6} {r['prefill_seconds']:>9.2f} "
                     f"{_mb(r['peak_memory_bytes']):>8} {_mb(r['kv_cache_bytes']):>7} {bound:>8} {ratio:>7}")
    return "\n".join(lines)


def format_markdown(records: Sequence[dict[str, Any]], naive: bool = False) -> str:
    """The table as GitHub markdown (for the README)."""
    if naive:
        lines = ["| mode (run once, cold, in this order) | context | tok/s, prefill included |", "|---|---:|---:|"]
        lines += [f"| {r['label']} | {r['context_tokens']} | {r['end_to_end_tokens_per_second']:.2f} |" for r in records]
        return "\n".join(lines)
    lines = ["| mode | context | decode tok/s (min-max) | ms/token | x baseline | prefill s | KV MB | peak RSS MB "
             "| bound ms | x bound |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(records, key=lambda r: (r["context_tokens"], MODES.index(r["mode"]))):
        speed = "-" if r["speedup_vs_baseline"] is None else f"{r['speedup_vs_baseline']:.2f}"
        bound = "-" if r["bound_ms_per_token"] is None else f"{r['bound_ms_per_token']:.1f}"
        ratio = "-" if r["bound_ratio"] is None else f"{r['bound_ratio']:.1f}"
        lines.append(f"| {r['label']} | {r['context_tokens']} | {r['tokens_per_second']:.1f} "
                     f"({r['tokens_per_second_min']:.1f}-{r['tokens_per_second_max']:.1f}) | {r['ms_per_token']:.1f} | "
                     f"{speed} | {r['prefill_seconds']:.2f} | {_mb(r['kv_cache_bytes'])} | "
                     f"{_mb(r['peak_memory_bytes'])} | {bound} | {ratio} |")
    return "\n".join(lines)


def write_json(path: str, results: Sequence[BenchResult]) -> None:
    payload = {"machine": results[-1].machine, "records": [r for res in results for r in res.records],
               "runs": [run for res in results for run in res.to_json()["runs"]]}
    text = json.dumps(payload, indent=1, default=str)
    if path == "-":
        print(text)
    else:
        with open(path, "w") as fh:
            fh.write(text + "\n")


def write_csv(path: str, records: Sequence[dict[str, Any]]) -> None:
    fh = sys.stdout if path == "-" else open(path, "w", newline="")
    try:
        writer = csv.DictWriter(fh, fieldnames=list(RECORD_FIELDS), extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in RECORD_FIELDS})
    finally:
        if fh is not sys.stdout:
            fh.close()


def _series(records: Sequence[dict[str, Any]]):
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(records, key=lambda r: r["context_tokens"]):
        by_label.setdefault(r["label"], []).append(r)
    return by_label


def _context_axis(ax, records: Sequence[dict[str, Any]]) -> None:
    """Log x axis ticked at the measured contexts, written as plain numbers."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_xticks(sorted({r["context_tokens"] for r in records}))
    ax.set_xticklabels([str(c) for c in sorted({r["context_tokens"] for r in records})])
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_speed(records: Sequence[dict[str, Any]], ax=None):
    """Decode tok/s (median, with min-max bars) against context length, one line per case."""
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.4, 4.0))
    for label, rs in _series(records).items():
        x = [r["context_tokens"] for r in rs]
        y = [r["tokens_per_second"] for r in rs]
        err = [[r["tokens_per_second"] - r["tokens_per_second_min"] for r in rs],
               [r["tokens_per_second_max"] - r["tokens_per_second"] for r in rs]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    _context_axis(ax, records)
    ax.set_xlabel("context (prompt tokens)")
    ax.set_ylabel("decode tokens / s (median, min-max)")
    r0 = records[0]
    ax.set_title(f"Decode speed, {r0['new_tokens']} new tokens, {r0['device']} {r0['dtype']}")
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return fig


def plot_speedup(records: Sequence[dict[str, Any]], ax=None):
    """Decode speed as a ratio to baseline (median of per-round ratios) against context length:
    the figure to read on a noisy machine, since both runs of a ratio shared the same moment."""
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.4, 4.0))
    for label, rs in _series(records).items():
        rs = [r for r in rs if r["speedup_vs_baseline"] is not None]
        if rs:
            ax.plot([r["context_tokens"] for r in rs], [r["speedup_vs_baseline"] for r in rs], marker="o",
                    label=label, linestyle="--" if label == "baseline" else "-")
    _context_axis(ax, records)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("context (prompt tokens)")
    ax.set_ylabel("decode speed / baseline (same round)")
    ax.set_title("Speed-up over baseline (median of per-round ratios)")
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return fig


def plot_kv_memory(records: Sequence[dict[str, Any]], ax=None):
    """KV-cache megabytes at the end of generation against context length."""
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.4, 4.0))
    from matplotlib.ticker import FuncFormatter

    markers, styles = "osv^D<>p", ("-", "--", ":", "-.")
    for i, (label, rs) in enumerate(_series(records).items()):  # equal lines overlap: vary marker and style
        ax.plot([r["context_tokens"] for r in rs], [r["kv_cache_bytes"] / 1e6 for r in rs],
                marker=markers[i % len(markers)], linestyle=styles[i % len(styles)],
                markersize=9 - 1.5 * (i % 4), label=label, alpha=0.85)
    _context_axis(ax, records)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    low, high = ax.get_ylim()  # label the minor ticks only when the axis spans less than a decade
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if high < 10 * low else ""))
    ax.set_xlabel("context (prompt tokens)")
    ax.set_ylabel("KV cache at the end (MB)")
    ax.set_title("KV-cache memory")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def save_plots(records: Sequence[dict[str, Any]], prefix: str = "bench") -> list[str]:
    """Write ``<prefix>_tokens_per_second.png``, ``<prefix>_speedup.png`` and ``<prefix>_kv_memory.png``
    into figures/ (through ``memollm.viz.save_figure``)."""
    import matplotlib.pyplot as plt

    from .viz import save_figure

    paths = []
    for name, plot in (("tokens_per_second", plot_speed), ("speedup", plot_speedup), ("kv_memory", plot_kv_memory)):
        fig = plot(records)
        paths.append(str(save_figure(fig, f"{prefix}_{name}")))
        plt.close(fig)
    return paths


# -- command line ---------------------------------------------------------------------------------
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

    from .llm import EbbinghausLLM
    from .models import auto_device, auto_dtype, load_model

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


def add_parser(sub) -> None:
    """Register ``memollm bench`` on the CLI's subparsers."""
    from .cli import add_model_args, int_list, name_list, positive_int
    from .policies import POLICIES

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
    p.add_argument("--budget", type=int_list, default=[DEFAULT_BUDGET],
                   help="KV budget(s) in tokens for evict (default: %(default)s)")
    p.add_argument("--policies", type=name_list(sorted(POLICIES)), default=list(DEFAULT_POLICIES),
                   help=f"eviction policies for evict (default: {','.join(DEFAULT_POLICIES)})")
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
    from .cli import UsageError, load_llm

    if args.replot:
        return _replot(args)
    if args.new_tokens < 2:
        raise UsageError("--new-tokens must be >= 2 (decode speed needs at least two tokens)")
    if args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    try:
        cases = make_cases(args.modes, args.policies, args.budget)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
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
    out = sys.stderr if "-" in (args.json, args.csv) else sys.stdout
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
        print("\nTargets (issue 4), as ratios measured in this run:", file=out)
        print(format_targets(goals), file=out)
    records = [r for res in results for r in res.records]
    if args.json:
        write_json(args.json, results)
    if args.csv:
        write_csv(args.csv, records)
    if not args.no_plots:
        paths = save_plots(fair.records, args.plot_prefix)
        print("\nfigures: " + ", ".join(paths), file=out)
    return 0


def _replot(args) -> int:
    from .cli import UsageError

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
        print("\nTargets (issue 4), as ratios measured in that run:\n" + format_targets(goals))
    if not args.no_plots and fair:
        print("\nfigures: " + ", ".join(save_plots(fair, args.plot_prefix)))
    return 0
