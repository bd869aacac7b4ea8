"""The fair benchmark of speed and memory (``memollm bench``): clocks and one timed run in
``timing``, summaries and tables in ``report``, the interleaved rounds in ``runner``; plots live in ``memollm.viz`` and the command line in ``memollm.cli.bench``."""

from .report import format_markdown, format_table, format_targets, records_csv, results_json, bench_summary, targets
from .runner import BenchResult, random_init_llm, run_benchmark, run_naive
from .timing import Case, PeakMemory, Run, TokenClock, make_cases, measure_bandwidth, time_generation, weight_bytes

__all__ = ["BenchResult", "Case", "PeakMemory", "Run", "TokenClock", "format_markdown", "format_table", "format_targets",
           "make_cases", "measure_bandwidth", "random_init_llm", "records_csv", "results_json", "run_benchmark", "run_naive",
           "bench_summary", "targets", "time_generation", "weight_bytes"]
