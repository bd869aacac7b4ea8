"""Timing for the fair benchmark (``memollm bench``): cases, clocks, peak memory, runs.

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

import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..config import MODES, MemoryConfig
from ..models import sync

DEFAULT_CONTEXTS = (128, 1024, 7500)  # the quick default; add 4096 for the README table
DEFAULT_NEW_TOKENS = 32
DEFAULT_REPEATS = 3
DEFAULT_WARMUP = 1
DEFAULT_BUDGET = 512
_DEFAULT_GRANULARITY = MemoryConfig().granularity_for("evict")  # labels name only a non-default one
DEFAULT_POLICIES = ("ebbinghaus",)  # add streaming (etc.) with --policies


@dataclass(frozen=True)
class Case:
    """One configuration to time: a mode, and for ``evict`` a policy, a budget and a granularity."""

    mode: str
    policy: str | None = None
    budget: int | None = None
    granularity: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "evict":
            cfg = MemoryConfig(memory_budget=self.budget or DEFAULT_BUDGET, policy=self.policy or "ebbinghaus",
                               granularity=self.granularity or "auto")
            cfg.check_mode("evict")
            object.__setattr__(self, "granularity", cfg.granularity_for("evict"))  # what runs, by name
        elif self.policy is not None or self.budget is not None or self.granularity is not None:
            raise ValueError(f"policy, budget and granularity apply to evict only, not to {self.mode!r}")

    @property
    def label(self) -> str:
        if self.mode != "evict":
            return self.mode
        suffix = "" if self.granularity == _DEFAULT_GRANULARITY else f"/{self.granularity}"
        return f"evict/{self.policy}/{self.budget}{suffix}"

    def generate_kwargs(self) -> dict[str, Any]:
        if self.mode != "evict":
            return {}
        return {"memory_budget": self.budget, "policy": self.policy, "granularity": self.granularity}


def make_cases(modes: Sequence[str] = MODES, policies: Sequence[str] = ("ebbinghaus",),
               budgets: Sequence[int] = (DEFAULT_BUDGET,), granularities: Sequence[str] = ("auto",)) -> list[Case]:
    """Baseline first (every ratio needs it), then the other modes; evict once per policy, budget
    and granularity (``auto``: the library's default, per layer)."""
    ordered = sorted(dict.fromkeys(modes), key=lambda m: MODES.index(m) if m in MODES else len(MODES))
    cases: list[Case] = []
    for mode in ordered:
        if mode == "evict":
            cases += [Case("evict", p, b, g) for g in dict.fromkeys(granularities) for b in budgets
                      for p in dict.fromkeys(policies)]
        else:
            cases.append(Case(mode))
    return cases


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
        sync(self.device)
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
            sync(self.device)
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
            sync(self.device)
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
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - start)
    del src, dst
    return 2 * n * 4 / best


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters (tied weights counted once) and buffers: read once per decode step."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return params + sum(b.numel() * b.element_size() for b in model.buffers())


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
        sync(device)
        start = time.perf_counter()
        result = llm.generate(prompt, new_tokens, case.mode, chat=False, ignore_eos=True, do_sample=False,
                              streamer=clock, **case.generate_kwargs())
        sync(device)
        end = time.perf_counter()
    times = clock.times
    if result["num_tokens"] != new_tokens or len(times) != new_tokens:
        raise RuntimeError(f"{case.label}: expected {new_tokens} new tokens, got {result['num_tokens']} "
                           f"({len(times)} reached the clock)")
    return Run(case=case, context_tokens=int(result["prompt_tokens"]), new_tokens=new_tokens, repeat=repeat,
               prefill_seconds=times[0] - start, decode_seconds=times[-1] - times[0], total_seconds=end - start,
               peak_memory_bytes=peak.peak, kv_cache_bytes=int(result["kv_cache_bytes"]),
               kv_cache_tokens=int(result["kv_cache_tokens"]), token_ids=list(result["token_ids"]))


