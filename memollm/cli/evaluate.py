"""``memollm eval``: argument parsing and output for the quality evaluation (``memollm.evaluate``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ..config import GRANULARITIES, POLICIES, POSITION_SCHEMES
from ..evaluate import EVICTING, agreement, long_stream, old_share, passkey, perplexity, stream_summary, table
from ..evaluate.capture import CAPTURE_POLICIES, capture, capture_table
from ..evaluate.retrieval import DEFAULT_LENGTH, DEFAULT_POLICIES, TASKS, retrieval, retrieval_summary
from ..stats import markdown, markdown_table, summarize
from ..texts import TEXT_SOURCES, load_text
from ..viz import plot_agreement, plot_passkey, plot_passkey_summary, plot_ppl, plot_stream, save_figure
from .chat import add_recall_parser
from .common import (UsageError, add_knob_args, add_model_args, add_run_args, check_knobs, check_model_args,
                     fraction_list, int_list, knobs_of, load_llm, name_list, positive_int, read_text_file, write_output)


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="quality at equal memory: perplexity, passkey, agreement",
                        description="Compare eviction policies at equal KV-cache budgets.")
    esub = ev.add_subparsers(dest="eval_command", required=True, parser_class=type(ev))
    choices = [p for p in POLICIES if p != "full"]

    def common(p, budgets: str, policies: str = ",".join(EVICTING), skip: tuple[str, ...] = ()) -> None:
        p.add_argument("--budget", "--budgets", dest="budgets", type=int_list, default=int_list(budgets),
                       help=f"KV-cache budgets in tokens (default: {budgets})")
        p.add_argument("--policies", type=name_list(choices), default=name_list(choices)(policies),
                       help=f"evicting policies, comma-separated (default: {policies}); 'full' is always added")
        p.add_argument("--seed", type=int, default=0, help="seed for keys and the random policy (default: 0)")
        add_run_args(p)
        p.add_argument("--no-plot", action="store_true", help="do not write the figure")
        add_model_args(p)
        add_knob_args(p, skip=("memory_budget", "policy", "granularity", *skip))  # a subcommand sweeps these

    def granularity(p) -> None:
        p.add_argument("--granularity", type=name_list(GRANULARITIES), default=["auto"],
                       help="who ranks slots, comma-separated to compare: shared, layer, head "
                            "(default: auto = layer for evict)")

    def split(p) -> None:
        p.add_argument("--split", choices=("report", "tune"), default="report",
                       help="first half (report, default) or second half (tune, for choosing settings) of each text")

    p = esub.add_parser("ppl", help="perplexity with the cache held to each budget (StreamingLLM protocol)")
    common(p, "64,128,256")
    granularity(p)
    p.add_argument("--max-tokens", type=positive_int, default=512,
                   help="tokens per passage (default: 512; the README's run uses 1024)")
    p.add_argument("--segments", "--passages", dest="segments", type=positive_int, default=1,
                   help="passages per source (or consecutive segments of --text-file) (default: 1)")
    p.add_argument("--sources", type=name_list(sorted(TEXT_SOURCES)), default=["docs", "prose"],
                   help="offline texts: docs (CPython's reference), prose (Austen's Persuasion) (default: both)")
    p.add_argument("--text-file", default=None, help="UTF-8 text to read instead of --sources")
    split(p)
    p.add_argument("--chunk", type=positive_int, default=1,
                   help="tokens per step (default: 1, the StreamingLLM protocol; >1 is faster and coarser)")
    p.set_defaults(handler=run_ppl)

    p = esub.add_parser("passkey", help="passkey retrieval accuracy per policy, budget, length and depth")
    common(p, "128")
    granularity(p)
    p.set_defaults(budgets=None)  # --budget, --budget-fractions or both; 128 tokens when neither
    p.add_argument("--budget-fractions", type=fraction_list(), default=[],
                   help="budgets as fractions of the document, plus the question, e.g. 0.25,0.125 "
                        "(added to --budget; pass --budget '' to use fractions only)")
    p.add_argument("--read", choices=("chunked", "whole"), default="chunked",
                   help="read the prompt in chunks with eviction between them (bounded memory), or whole and "
                        "compress after it (question-aware; peaks at the prompt) (default: chunked)")
    p.add_argument("--lengths", type=int_list, default=[512], help="prompt lengths in tokens (default: 512)")
    p.add_argument("--depths", type=fraction_list(), default=[0.1, 0.5, 0.9],
                   help="needle depths in [0, 1] (default: 0.1,0.5,0.9)")
    p.add_argument("--trials", type=positive_int, default=3, help="seeded keys per case (default: 3)")
    p.add_argument("--prefill-chunk", type=positive_int, default=32,
                   help="prompt tokens read per step, evicting between steps (default: 32)")
    p.set_defaults(handler=run_passkey)

    p = esub.add_parser("retrieval", help="retrieval over independent documents: passkey, several keys, "
                        "variable tracking")
    common(p, "128", ",".join(DEFAULT_POLICIES))
    p.set_defaults(budgets=[], no_plot=True)  # budgets are fractions of each document here; no figure
    p.add_argument("--task", "--tasks", dest="tasks", type=name_list(TASKS), default=list(TASKS),
                   help=f"tasks, comma-separated (default: {','.join(TASKS)})")
    p.add_argument("--cases", type=positive_int, default=8, help="documents per task (default: 8)")
    p.add_argument("--budget-fractions", type=fraction_list(), default=[0.25, 0.125],
                   help="budgets as fractions of each document, plus the question (default: 0.25,0.125)")
    p.add_argument("--length", type=positive_int, default=DEFAULT_LENGTH,
                   help=f"prompt tokens per document, about (default: {DEFAULT_LENGTH})")
    p.add_argument("--granularity", choices=GRANULARITIES, default="auto",
                   help="who ranks slots (default: auto = layer for evict)")
    p.add_argument("--text-file", default=None, help="UTF-8 text whose consecutive pieces are the filler "
                   "(default: the offline docs and prose passages)")
    split(p)
    p.set_defaults(handler=run_retrieval)

    p = esub.add_parser("agreement", help="greedy agreement with the full cache over a generation")
    common(p, "64,128")
    p.add_argument("--prompt-tokens", type=positive_int, default=96, help="prompt tokens (default: 96)")
    p.add_argument("--new-tokens", type=positive_int, default=192, help="generated tokens (default: 192)")
    p.add_argument("--segments", type=positive_int, default=1, help="prompts from consecutive text (default: 1)")
    p.add_argument("--text-file", default=None, help="UTF-8 text (default: CPython's pydoc_data.topics)")
    p.add_argument("--prefill-chunk", type=positive_int, default=16, help="prompt tokens per step (default: 16)")
    p.add_argument("--repetition-penalty", type=float, default=1.3,
                   help="penalty for the full cache's generation only (default: 1.3; 1 = plain greedy)")
    p.set_defaults(handler=run_agreement)

    p = esub.add_parser("stream", help="perplexity along a stream longer than the context, per position scheme")
    common(p, "256,1024", "streaming,ebbinghaus", skip=("positions",))
    p.add_argument("--tokens", type=positive_int, default=20_000, help="tokens to stream (default: 20000)")
    p.add_argument("--positions", type=name_list(POSITION_SCHEMES), default=list(POSITION_SCHEMES),
                   help="position schemes: true, cache (default: both)")
    p.add_argument("--every", type=positive_int, default=1000, help="perplexity window in tokens (default: 1000)")
    p.add_argument("--chunk", type=positive_int, default=1, help="tokens per step (default: 1)")
    p.add_argument("--granularity", choices=GRANULARITIES, default="auto",
                   help="who ranks slots (default: auto = layer for evict)")
    p.add_argument("--source", choices=sorted(TEXT_SOURCES), default=None,
                   help="offline text: docs (CPython's reference), prose (Austen's Persuasion) (default: docs)")
    p.add_argument("--text-file", default=None, help="UTF-8 text to stream instead of --source (its first half is "
                   "the report split, its second half the tune split)")
    split(p)
    p.set_defaults(handler=run_stream)

    add_recall_parser(esub)

    p = esub.add_parser("capture", help="share of the next query's attention on the slots each policy keeps",
                        description="Simulate a cache of M slots per layer and KV head over full-cache passes "
                                    "(4 sinks and 16 newest tokens kept) and measure the attention it captures.")
    p.add_argument("--budget", "--budgets", dest="budgets", type=int_list, default=[64, 128, 256],
                   help="cache slots M (default: 64,128,256)")
    p.add_argument("--policies", type=name_list(CAPTURE_POLICIES), default=list(CAPTURE_POLICIES),
                   help=f"policies, comma-separated (default: {','.join(CAPTURE_POLICIES)})")
    p.add_argument("--passages", type=positive_int, default=6, help="passages, docs and prose alternating (default: 6)")
    p.add_argument("--tokens", type=positive_int, default=1024, help="tokens per passage (default: 1024)")
    p.add_argument("--gate", default=None, help="strength gate file for learned (default: the bundled one)")
    add_run_args(p)
    add_model_args(p)
    split(p)
    p.set_defaults(handler=run_capture, seed=0, no_plot=True)

    p = esub.add_parser("curves", help="the model's own forgetting curves, by kind of token and layer",
                        description="How often a token is still among the keys holding half of a later query's "
                                    "attention, by age and kind of token, over all memory layers and per layer.")
    p.add_argument("--passages", type=positive_int, default=2, help="passages, docs and prose alternating (default: 2)")
    p.add_argument("--tokens", type=positive_int, default=256, help="tokens per passage (default: 256)")
    p.add_argument("--samples", type=positive_int, default=512,
                   help="draws per passage, layer and age bucket (default: 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default: 0)")
    add_run_args(p)
    add_model_args(p)
    p.add_argument("--split", choices=("report", "tune"), default="tune",
                   help="which half of the bundled texts to read (default: tune)")
    p.set_defaults(handler=run_curves, budgets=[])

    p = esub.add_parser("report", help="tables of every task and budget against the best peer, and a forest plot",
                        description="Regenerate the results page (quality_report.md, quality_forest.png) from the "
                                    "eval_*.json records in a folder.")
    p.add_argument("--figures", default="figures", help="folder of the records and of the outputs (default: figures)")
    p.add_argument("--policy", default="ebbinghaus", help="the policy under test (default: ebbinghaus)")
    p.add_argument("--peers", type=name_list(choices), default=["streaming", "h2o", "tova", "snapkv"],
                   help="peers, comma-separated (default: streaming,h2o,tova,snapkv)")
    p.add_argument("--level", type=float, default=0.95, help="interval level; 1 - level is the Holm alpha")
    p.add_argument("--readme", default=None, help="a README whose quality-report markers get the tables")
    p.add_argument("--no-plot", action="store_true", help="do not draw the forest plot")
    p.set_defaults(handler=run_report)


def _check_args(args) -> None:
    if getattr(args, "budget_fractions", None) is not None and args.budgets is None:
        args.budgets = [] if args.budget_fractions else [128]
    cfg = check_knobs(args, "evict")  # every evaluation compares evicting policies
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    penalty = getattr(args, "repetition_penalty", 1.0)
    if not (penalty > 0 and penalty < float("inf")):
        raise UsageError(f"--repetition-penalty must be a finite number > 0, got {penalty}")
    step = max(getattr(args, "chunk", 1), getattr(args, "prefill_chunk", 1))
    for b in args.budgets:
        cfg.check_budget(b, 1 if getattr(args, "read", "chunked") == "whole" else step)
    if getattr(args, "text_file", None) and not Path(args.text_file).is_file():
        raise UsageError(f"--text-file {args.text_file}: no such file")
    if args.threads:
        torch.set_num_threads(args.threads)


def _finish(args, records: list[dict], value: str, figure: str, plot) -> None:
    if args.json:
        write_output(args.json, json.dumps(records, indent=1))
    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg", force=False)
        fig = plot(records)
        path = save_figure(fig, figure)
        print(f"figure: {path}", file=sys.stderr)


def _print_summary(records: list[dict], value: str, *, lower_is_better: bool, interval: str = "bootstrap",
                   item: str = "passage", by=("policy", "granularity", "budget")) -> list[dict]:
    rows = summarize([r for r in records if r["policy"] != "full"], value, by=by, item=item,
                     lower_is_better=lower_is_better, interval=interval)
    present = {r["policy"] for r in records}
    print(markdown_table(rows, by=by, baselines=[b for b in ("streaming", "tova") if b in present]))
    return rows


def run_ppl(args) -> int:
    llm, config = _start(args)
    text = read_text_file(args.text_file) if args.text_file else None
    records = perplexity(llm, budgets=args.budgets, policies=args.policies, max_tokens=args.max_tokens,
                         segments=args.segments, text=text, split=args.split,
                         sources=None if args.text_file else args.sources, granularities=args.granularity,
                         chunk=args.chunk, seed=args.seed, config=config)
    what = args.text_file or " + ".join(args.sources)
    print(f"perplexity, {args.segments} passage(s) x {args.max_tokens} tokens per source ({what}, {args.split} "
          f"split), chunk {args.chunk}, model {llm.model_name}")
    print(table(records, "perplexity"))
    print("\nperplexity of the tokens read after eviction started (position >= budget), mean over passages "
          "[95% bootstrap interval], and the paired difference to streaming and tova [95% t interval] (bold: below 0):")
    _print_summary(records, "perplexity_after_budget", lower_is_better=True)
    print("\ngreedy top-1 agreement with the full cache on those tokens:")
    print(table(records, "top1_agreement_after_budget", fmt="{:.3f}"))
    _finish(args, records, "perplexity", "eval_ppl", plot_ppl)
    return 0


def run_passkey(args) -> int:
    llm, config = _start(args)
    records = passkey(llm, budgets=args.budgets, budget_fractions=args.budget_fractions, lengths=args.lengths,
                      depths=args.depths, trials=args.trials, policies=args.policies, read=args.read,
                      granularities=args.granularity, prefill_chunk=args.prefill_chunk, seed=args.seed,
                      config=config)
    print(f"passkey accuracy over {args.trials} keys per case, lengths {args.lengths}, depths {args.depths}, "
          f"prompt read {args.read}; the question comes after the document")
    print(table(records, "accuracy"))
    cases = [dict(r, case=f"{r['length']}/{r['depth']}/{i}", hit=h) for r in records if r["policy"] != "full"
             for i, h in enumerate(r["hits"])]
    key = "budget_fraction" if args.budget_fractions and not args.budgets else "budget"
    print("\naccuracy over every length, depth and key [95% Wilson interval], paired differences by case:")
    rows = _print_summary(cases, "hit", lower_is_better=False, interval="wilson", item="case",
                          by=("policy", "granularity", key))
    full = [h for r in records if r["policy"] == "full" for h in r["hits"]]
    print(f"full cache (the ceiling): {sum(full)}/{len(full)}")
    if key == "budget_fraction":  # intervals per policy, granularity and fraction
        _finish(args, records, "accuracy", "eval_passkey", lambda _: plot_passkey_summary(rows))
    else:  # a heat map by budget, length and depth
        _finish(args, records, "accuracy", "eval_passkey", plot_passkey)
    return 0


def run_retrieval(args) -> int:
    if args.budgets:
        raise UsageError("retrieval budgets are fractions of each document: use --budget-fractions, not --budget")
    if any(f <= 0 for f in args.budget_fractions):
        raise UsageError(f"--budget-fractions must be in (0, 1], got {args.budget_fractions}")
    llm, config = _start(args)
    text = read_text_file(args.text_file) if args.text_file else None
    records = retrieval(llm, tasks=args.tasks, cases=args.cases, budget_fractions=args.budget_fractions,
                        policies=args.policies, split=args.split, length=args.length, granularity=args.granularity,
                        seed=args.seed, text=text, config=config)
    what = args.text_file or "docs + prose"
    print(f"retrieval over {args.cases} independent documents per task ({what}, {args.split} split, about "
          f"{args.length} tokens), read whole and compressed after it, model {llm.model_name}")
    print("accuracy on the documents the full cache answered (n = those documents), and over all documents:\n")
    print(retrieval_markdown(retrieval_summary(records)))
    _finish(args, records, "correct", "eval_retrieval", None)
    return 0


def retrieval_markdown(summary: list[dict]) -> str:
    """``retrieval_summary`` rows as a table: accuracy where the full cache answered, and over all documents."""
    rows = []
    for row in summary:
        acc = row["accuracy_full_answered"]
        frac = "–" if row["budget_fraction"] is None else f"{row['budget_fraction']:g}"
        rows.append([row["task"], frac, row["policy"], "–" if acc is None else f"{acc:.2f}",
                     f"{row['full_answered']}/{row['documents']}", f"{row['accuracy']:.2f}"])
    return markdown(["task", "fraction", "policy", "accuracy (full answered)", "n", "accuracy (all)"], rows, "lrlrrr")


def run_agreement(args) -> int:
    llm, config = _start(args)
    text = load_text(args.text_file)
    records = agreement(llm, budgets=args.budgets, policies=args.policies, prompt_tokens=args.prompt_tokens,
                        new_tokens=args.new_tokens, segments=args.segments, text=text,
                        prefill_chunk=args.prefill_chunk, seed=args.seed, repetition_penalty=args.repetition_penalty,
                        config=config)
    print(f"greedy agreement with the full cache over {args.new_tokens} generated tokens "
          f"({records[0]['distinct_generated']:.0%} of them distinct)")
    print(table(records, "agreement", fmt="{:.3f}"))
    _finish(args, records, "agreement", "eval_agreement", plot_agreement)
    return 0


def run_stream(args) -> int:
    if args.text_file and args.source:
        raise UsageError("--text-file and --source name two texts: pass one")
    text = read_text_file(args.text_file) if args.text_file else None
    source = Path(args.text_file).name if args.text_file else args.source or "docs"
    llm, config = _start(args)
    records = long_stream(llm, tokens=args.tokens, budgets=args.budgets, schemes=args.positions,
                          policies=args.policies, window=args.every, chunk=args.chunk, source=source, text=text,
                          split=args.split, seed=args.seed,
                          config=config.replace(granularity=args.granularity))
    print(f"perplexity in windows of {args.every} tokens along a {args.tokens}-token stream of {source} "
          f"({args.split} split, chunk {args.chunk}), model {llm.model_name}, context {llm.max_positions}")
    windows = [r for r in records if r["evaluation"] == "stream"]
    print(table([dict(r, line=f"{r['policy']}/{r['positions']}/{r['budget']}") for r in windows], "perplexity",
                rows="line", cols="window_start", fmt="{:.1f}"))
    print("\nshare of each layer's slots holding tokens read more than four budgets before the end "
          "(min / median / max over layers):")
    for r in records:
        if r["evaluation"] == "stream_kept":
            print(f"  {r['policy']}/{r['positions']}/{r['budget']}: " + " / ".join(f"{v:.2f}" for v in old_share(r)))
    context = llm.max_positions or args.tokens
    print(f"\nmean window perplexity before (windows ending in {context // 2:,}-{context:,}) and after the trained "
          "context, and the paired difference to streaming over all windows [95% t interval over windows]:")
    print(stream_markdown(stream_summary(records, context)))
    granularity = llm.config.replace(granularity=args.granularity).granularity_for("evict")
    _finish(args, records, "perplexity", "eval_stream",
            lambda recs: plot_stream(recs, context=llm.max_positions, granularity=granularity))
    return 0


def stream_markdown(summary: list[dict]) -> str:
    """``stream_summary`` rows as a table: window perplexity before and after the trained context."""
    rows = []
    for row in summary:
        cells = [row["policy"], row["positions"], row["budget"], row["granularity"]]
        cells += ["" if row[k] is None else f"{row[k]:.1f}" for k in ("before", "after", "worst_after")]
        d = row["vs_baseline"]
        rows.append(cells + ["–" if d is None else f"{d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}]"])
    return markdown(["policy", "positions", "budget", "granularity", "before", "after", "worst after", "vs streaming"],
                    rows, "llrlrrrr")


def run_capture(args) -> int:
    from ..strength import find_gate

    llm, _ = _start(args)
    gate = find_gate(llm.model, args.gate) if "learned" in args.policies else None
    records = capture(llm, passages=args.passages, tokens=args.tokens, budgets=args.budgets, policies=args.policies,
                      gate=gate, split=args.split)
    print(f"attention capture over {args.passages} passage(s) x {args.tokens} tokens ({args.split} split), "
          f"model {llm.model_name}; mean over queries after the cache fills, layers and KV heads; "
          "capture old: kept share of the mass on tokens older than 4 M")
    print(capture_table(records))
    _finish(args, records, "capture", "eval_capture", None)
    return 0


def run_curves(args) -> int:
    from ..evaluate.curves import AGES, curves_table, forgetting_curves
    from ..training import SINKS

    if args.tokens <= SINKS + AGES[-1][0]:
        raise UsageError(f"--tokens must be > {SINKS + AGES[-1][0]} (sinks and the oldest age bucket, "
                         f"{AGES[-1][0]}-{AGES[-1][1]}), got {args.tokens}")
    llm, _ = _start(args)
    records = forgetting_curves(llm, passages=args.passages, tokens=args.tokens, split=args.split,
                                samples=args.samples, seed=args.seed)
    print(f"share of draws still retrieved (among the keys holding half of the later query's attention), "
          f"{args.passages} passage(s) x {args.tokens} tokens ({args.split} split), model {llm.model_name}")
    print(curves_table(records), curves_table(records, age=AGES[2]), sep="\n\n")
    if args.json:
        write_output(args.json, json.dumps(records, indent=1))
    return 0


def _start(args):
    """Check the arguments, then load the model: the model and the config the flags ask for."""
    _check_args(args)
    check_model_args(args)
    llm = load_llm(args)
    return llm, llm.config.replace(**knobs_of(args))



def run_report(args) -> int:
    from ..evaluate.report import write_report
    from ..viz import plot_forest

    if not 0 < args.level < 1:
        raise UsageError(f"--level must be in (0, 1), got {args.level}")
    figures = Path(args.figures)
    if not figures.is_dir():
        raise UsageError(f"--figures {args.figures}: no such folder")

    def plot(rows):
        import matplotlib

        matplotlib.use("Agg", force=False)
        return plot_forest(rows, title=f"{args.policy} against its best peer, paired (Holm across peers)")

    write_report(figures, policy=args.policy, peers=args.peers, level=args.level,
                 readme=Path(args.readme) if args.readme else None, plot=None if args.no_plot else plot)
    return 0
