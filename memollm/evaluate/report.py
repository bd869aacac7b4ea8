"""The results page: one table per task and budget, every policy against its best peer.

    memollm eval report [--policy ebbinghaus] [--readme README.md]

Reads the evaluation records in figures/ (``eval_ppl.json``, ``eval_retrieval.json``,
``eval_stream_tokens.json``, ``eval_stream.json``, ``eval_recall.json`` and
``eval_recall_stream.json``, where they exist), and writes ``figures/quality_report.md`` and
``figures/quality_forest.png``. With ``--readme`` the text between the README's markers
``<!-- quality-report:begin -->`` and ``<!-- quality-report:end -->`` is replaced by the tables.
Another ``--policy`` (``ebbinghaus_learned``) gets its own page, plot and markers, named after it.

Why this shape: a policy is worth its memory only if it beats the *best* competitor at the same
budget, not the weakest, and on the same units (passages, documents, windows), so every
comparison is paired. Runs hold a handful of units, so intervals are Student-t, and a table
compares with several peers at once, so p-values are Holm-corrected before a verdict. The output
is byte-identical on a rerun (sorted, fixed rounding, no timestamps), so a diff shows real changes.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..stats import Paired, holm, judge, markdown, paired

BEGIN, END = "<!-- quality-report:begin -->", "<!-- quality-report:end -->"
PEERS = ("streaming", "h2o", "tova", "snapkv")
VERDICT = {"better": "wins", "worse": "loses", "tie": "ties"}
DEFAULT_POLICY = "ebbinghaus"
"""The policy whose page is ``quality_report.md``; another policy's page and README markers carry its name."""


def outputs(policy: str) -> tuple[str, str, tuple[str, str]]:
    """The page's and the forest plot's file names and the README markers for ``policy``'s report
    (the default's markers get every table; another policy's get ``render_summary``)."""
    if policy == DEFAULT_POLICY:
        return "quality_report.md", "quality_forest.png", (BEGIN, END)
    return (f"quality_report_{policy}.md", f"quality_forest_{policy}.png",
            (f"<!-- quality-report {policy}:begin -->", f"<!-- quality-report {policy}:end -->"))


@dataclass(frozen=True)
class Spec:
    """How one evaluation's records become tables: what is measured, on which unit, per what."""
    name: str
    evaluation: str
    file: str
    value: str
    metric: str
    lower_is_better: bool
    unit: str
    noun: str
    task: Callable[[dict], str]
    budget: str
    settings: tuple[str, ...]
    answered: str | None = None  # scored only on these items the full cache answered ("document", "fact")
    also: tuple[str, ...] = ()  # runs of further policies on the same units (their own `full` rows are dropped)


SPECS = (
    Spec("perplexity", "ppl", "eval_ppl.json", "perplexity_after_budget", "perplexity after the budget", True,
         "passage", "passage", lambda r: "perplexity", "budget", ("granularity",), also=("eval_ppl_learned.json",)),
    Spec("retrieval", "retrieval", "eval_retrieval.json", "correct", "accuracy", False,
         "document", "document", lambda r: str(r["task"]), "budget_fraction", ("granularity",), "document",
         also=("eval_retrieval_learned.json",)),
    Spec("stream", "stream", "eval_stream_tokens.json", "perplexity", "stream perplexity", True,
         "window_start", "window", lambda r: f"stream {r['source']}, token by token" if r.get("source") else "stream",
         "budget", ("granularity", "positions")),
    Spec("long stream", "stream", "eval_stream.json", "perplexity", "stream perplexity", True,
         "window_start", "window", lambda r: f"long stream {r['source']}, chunks of {r['chunk']}",
         "budget", ("granularity", "positions"), also=("eval_stream_learned.json",)),
    Spec("conversations", "recall", "eval_recall.json", "correct", "recall", False, "conversation",
         "conversation", lambda r: _reviewed("conversation recall", r), "budget_fraction", (), "fact",
         also=("eval_recall_learned.json",)),
    Spec("stream recall", "recall_stream", "eval_recall_stream.json", "correct", "recall", False, "case",
         "passage", lambda r: _reviewed("recall along a stream", r), "budget_fraction", (), "fact"),
)


@dataclass
class Row:
    policy: str
    mean: float
    n: int
    peer: str | None = None
    diff: Paired | None = None
    p_holm: float = math.nan
    verdict: str | None = None


@dataclass
class Table:
    spec: Spec
    task: str
    settings: tuple
    budget: Any
    protocol: str
    rows: list[Row] = field(default_factory=list)

    @property
    def title(self) -> str:
        """Task, settings and budget: the table's heading."""
        bits = [self.task] + [f"{k} {v}" for k, v in zip(self.spec.settings, self.settings) if v is not None]
        return " · ".join(bits + [f"budget {_fmt_budget(self.spec, self.budget)}"])


def load(path: Path, spec: Spec) -> list[dict]:
    """The records of ``spec`` in ``path``: a JSON list, or a dict with ``records``; a missing file is none."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    recs = data.get("records", []) if isinstance(data, dict) else data
    if not isinstance(recs, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(recs).__name__}")
    return [r for r in recs if r.get("evaluation", spec.evaluation) == spec.evaluation]


def _num(x: float, digits: int = 3, sign: bool = False) -> str:
    if x is None or math.isnan(x):
        return "–"
    s = f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"
    return s.lstrip("+-") if float(s) == 0 else s  # no "-0.000"


def _p(p: float) -> str:
    return "–" if math.isnan(p) else ("<0.001" if p < 0.001 else _num(p))


def _key(x: Any) -> tuple:
    """Sort numbers numerically, then everything else by text (None last)."""
    return (0, float(x), "") if isinstance(x, (int, float)) else (1 if x is not None else 2, 0.0, str(x))


def _fmt_budget(spec: Spec, b: Any) -> str:
    if spec.budget == "budget_fraction":
        return f"{b:g} of the {spec.noun}" if isinstance(b, (int, float)) else str(b)
    return f"{b} tokens" if b is not None else "none"


def _units(recs: list[dict], spec: Spec) -> dict[str, dict[Any, float]]:
    """policy -> unit -> value, several records of one unit (cases of a document) averaged:
    the unit, not the record, is the independent sample."""
    acc: dict[str, dict[Any, list[float]]] = {}
    for r in recs:
        try:
            v = float(r[spec.value])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{spec.name} record lacks a numeric {spec.value!r}: {r}") from None
        if spec.unit not in r:
            raise ValueError(f"{spec.name} record lacks its unit {spec.unit!r}: {r}")
        acc.setdefault(str(r["policy"]), {}).setdefault(r[spec.unit], []).append(v)
    return {p: {u: float(np.mean(v)) for u, v in units.items()} for p, units in acc.items()}


def _answered(r: dict) -> bool:
    if "full_correct" not in r:
        raise ValueError(f"record lacks 'full_correct' (did the full cache answer?): {r}")
    return bool(r["full_correct"])


def _reviewed(task: str, r: dict) -> str:
    """A recall task split by whether the fact was asked for again before its last question:
    reviewed facts test what a memory keeps, never-reviewed ones what survives untouched."""
    return f"{task}, {'reviewed facts' if r['reviews'] else 'facts never reviewed'}"


def _answered_note(spec: Spec, grp: list[dict], ceiling: bool) -> str:
    """Which of the records' items the full cache answered (the rows are scored on those only)."""
    items = {(r[spec.unit], r.get("fact")) for r in grp}
    answered = {(r[spec.unit], r.get("fact")) for r in grp if _answered(r)}
    note = f" (the {len(answered)} of {len(items)} {spec.answered}s the full cache answered"
    if spec.answered != spec.noun:
        units = {u for u, _ in items}
        note += f", in {len({u for u, _ in answered})} of {len(units)} {spec.noun}s"
    return note + ("; the `full` row is its accuracy on all of them)" if ceiling else ")")


def _protocol(spec: Spec, recs: list[dict], budget: Any, budgets: list, n_units: int, extra: str) -> str:
    parts = []
    for key in ("split", "chunk", *spec.settings):
        vals = sorted({r[key] for r in recs if r.get(key) is not None}, key=_key)
        if vals:
            parts.append(f"{key} {', '.join(map(str, vals))}")
    parts.append(f"budget {_fmt_budget(spec, budget)} (measured: {', '.join(f'{b:g}' if isinstance(b, float) else str(b) for b in budgets)})")
    if spec.budget == "budget_fraction":
        tokens = sorted({r["budget"] for r in recs if isinstance(r.get("budget"), (int, float))})
        if tokens:
            parts.append(f"{tokens[0]}–{tokens[-1]} tokens" if len(tokens) > 1 else f"{tokens[0]} tokens")
    parts.append(f"{n_units} {spec.noun}s paired by {spec.unit}{extra}")
    return "Protocol: " + "; ".join(parts) + "."


def build_tables(records: dict[str, list[dict]], *, policy: str, peers: Sequence[str] = PEERS,
                 level: float = 0.95) -> list[Table]:
    """One :class:`Table` per (evaluation, task, settings, budget) in ``records`` (by spec name)."""
    tables = []
    for spec in SPECS:
        recs = records.get(spec.name, [])
        full = [r for r in recs if r["policy"] == "full"]
        rest = [r for r in recs if r["policy"] != "full"]
        groups: dict[tuple, list[dict]] = {}
        for r in rest:
            groups.setdefault((spec.task(r), tuple(r.get(k) for k in spec.settings), r.get(spec.budget)), []).append(r)
        budgets_of: dict[str, set] = {}
        for task, _, b in groups:
            budgets_of.setdefault(task, set()).add(b)
        for task, settings, budget in sorted(groups, key=lambda k: (k[0], [_key(s) for s in k[1]], _key(k[2]))):
            grp = groups[task, settings, budget]
            ceiling = [r for r in full if spec.task(r) == task and r.get(spec.budget) in (None, budget)]
            extra = ""
            if spec.answered:
                extra = _answered_note(spec, grp, bool(ceiling))
                grp = [r for r in grp if _answered(r)]
            values = _units(grp, spec)
            n_units = len({u for v in values.values() for u in v})
            table = Table(spec, task, settings, budget,
                          _protocol(spec, groups[task, settings, budget], budget,
                                    sorted(budgets_of[task], key=_key), n_units, extra))
            if ceiling:
                top = _units(ceiling, spec)["full"]
                table.rows.append(Row("full", float(np.mean(list(top.values()))), len(top)))
                units = {u for v in values.values() for u in v}
                if not spec.answered and set(top) != units:
                    table.protocol += (f" `full` was measured on {len(set(top) & units)} of these {spec.noun}s"
                                       f"{f' and {len(set(top) - units)} others' if set(top) - units else ''}:"
                                       " its mean is not on the same units as the rows below it.")
            means = {p: float(np.mean(list(v.values()))) for p, v in values.items() if v}
            sign = 1 if spec.lower_is_better else -1
            ranked = sorted(means, key=lambda p: (sign * means[p], p))
            for p in sorted(ranked, key=lambda p: (p != policy, ranked.index(p))):
                row = Row(p, means[p], len(values[p]))
                others = [q for q in ranked if q in peers and q != p]  # best first
                comps = []
                for q in others:
                    common = sorted(set(values[p]) & set(values[q]), key=_key)
                    if common:
                        comps.append((q, paired([values[p][u] for u in common], [values[q][u] for u in common],
                                                level=level)))
                if comps:
                    verdicts = judge([c for _, c in comps], lower_is_better=spec.lower_is_better, alpha=1 - level)
                    row.peer, row.diff = comps[0]
                    row.p_holm = holm([c.p for _, c in comps])[0]
                    row.verdict = VERDICT[verdicts[0]]
                table.rows.append(row)
            tables.append(table)
    return tables


def render_table(t: Table, *, policy: str, level: float) -> str:
    pct = f"{100 * level:g}%"
    head = ["policy", t.spec.metric, "n", "vs best peer", f"Δ [{pct} t-interval]", "p (Holm)", "verdict"]
    rows = []
    for r in t.rows:
        ceiling = f"full (all {t.spec.answered}s)" if t.spec.answered else "full (ceiling)"
        name = ceiling if r.policy == "full" else (f"**{r.policy}**" if r.policy == policy else r.policy)
        if r.diff is None:
            cells = [name, _num(r.mean), str(r.n), "–", "–", "–", "–"]
        else:
            d = r.diff
            interval = _num(d.mean, sign=True) + ("" if math.isnan(d.low) else
                                                  f" [{_num(d.low, sign=True)}, {_num(d.high, sign=True)}]")
            p = _p(r.p_holm)
            paired_n = "" if d.n == r.n else f" (n={d.n})"  # the units both were measured on
            cells = [name, _num(r.mean), str(r.n), str(r.peer), interval + paired_n, p, str(r.verdict)]
        rows.append(cells)
    return markdown(head, rows, "lrrlrrl")


def render(tables: list[Table], *, policy: str, peers: Sequence[str], level: float, sources: list[str],
           forest: str | None) -> str:
    """The page's body (no top heading): method, forest plot, then every table with its protocol."""
    pct = f"{100 * level:g}%"
    out = [f"Generated by `memollm eval report` from {', '.join(f'`{s}`' for s in sources) or 'no records'}. "
           f"One table per task and budget. Each policy is paired, unit by unit, with the best *other* peer at "
           f"that budget (best mean among {', '.join(peers)}); Δ is policy minus peer with its {pct} paired "
           f"Student-t interval. p is Holm-adjusted across all the peers that policy was compared with, and "
           f"the verdict is *wins* or *loses* only where that p is below {1 - level:.2g} in that direction, "
           f"else *ties*. `full` keeps every token: the ceiling, not a competitor. Perplexity: lower is "
           f"better; retrieval accuracy: higher is better, scored on the documents the full cache answered; "
           f"recall (conversations, along a stream): higher is better, the mean per conversation or passage "
           f"over the facts the full cache answered."]
    if forest:
        out.append(f"![{policy} against its best peer per task and budget]({forest})")
    if not tables:
        out.append("No evaluation records were found.")
    for t in tables:
        out += [f"### {t.title}", t.protocol, render_table(t, policy=policy, level=level)]
    return "\n\n".join(out) + "\n"


def render_summary(tables: list[Table], *, policy: str, level: float, page: str) -> str:
    """``policy``'s verdicts per family (tables won, tied, lost against the best peer) and every
    loss, with a link to the whole ``page``: what a README has room for."""
    rows, losses = [], []
    for family in dict.fromkeys(t.spec.name for t in tables):
        mine = [(t, r) for t in tables if t.spec.name == family for r in t.rows if r.policy == policy and r.verdict]
        if not mine:
            continue
        rows.append([family, len(mine)] + [sum(r.verdict == v for _, r in mine) for v in ("wins", "ties", "loses")])
        losses += [f"* {t.title}: {_num(r.diff.mean, sign=True)} [{_num(r.diff.low, sign=True)}, "
                   f"{_num(r.diff.high, sign=True)}] against `{r.peer}` (n = {r.diff.n}, Holm p {_p(r.p_holm)})"
                   for t, r in mine if r.verdict == "loses"]
    out = [f"`{policy}` against its best peer per table ({100 * level:g}% paired t-intervals, Holm); every "
           f"table is in [{page}]({page}).", markdown(["family", "tables", "wins", "ties", "loses"], rows, "lrrrr")]
    if losses:
        out.append("Where it loses:\n\n" + "\n".join(losses))
    return "\n\n".join(out) + "\n"


def forest_rows(tables: list[Table], policy: str) -> list[dict[str, Any]]:
    rows = []
    for t in tables:
        for r in t.rows:
            if r.policy == policy and r.diff is not None:
                better = "lower" if t.spec.lower_is_better else "higher"
                settings = [str(v) if k == "granularity" else f"{k[:3]} {v}"
                            for k, v in zip(t.spec.settings, t.settings) if v is not None]
                budget = f"{t.budget:g}" if isinstance(t.budget, float) else str(t.budget)
                # true positions past the trained context differ by tens: their own panel keeps the others readable
                where = " (true positions)" if dict(zip(t.spec.settings, t.settings)).get("positions") == "true" else ""
                rows.append({"label": " · ".join([t.task, *settings, f"B={budget}", f"vs {r.peer}"]),
                             "mean": r.diff.mean, "low": r.diff.low, "high": r.diff.high, "n": r.diff.n,
                             "marked": r.verdict in ("wins", "loses"), "verdict": r.verdict,
                             "panel": f"Δ {t.spec.metric}{where}: {policy} − best peer ({better} is better)"})
    return rows


def replace_between_markers(readme: Path, body: str, markers: tuple[str, str] = (BEGIN, END)) -> bool:
    """Put ``body`` between the README's ``markers``; False (README untouched) where they are missing."""
    begin, end_marker = markers
    text = readme.read_text()
    start, end = text.find(begin), text.find(end_marker)
    if start < 0 or end < start:
        print(f"{readme}: markers {begin} ... {end_marker} not found; the README is left as it is")
        return False
    new = text[:start + len(begin)] + "\n" + body + text[end:]
    if new != text:
        readme.write_text(new)
    return True


def _rel(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target.resolve(), start.resolve())).as_posix()


def load_all(figures: Path) -> tuple[dict[str, list[dict]], list[str]]:
    """Every spec's records in ``figures`` and the files that were there."""
    records, sources = {}, []
    for spec in SPECS:
        path = figures / spec.file
        records[spec.name] = load(path, spec)
        if path.exists():
            sources.append(spec.file)
        for name in spec.also:
            more = [r for r in load(figures / name, spec) if r["policy"] != "full"]
            if more:
                records[spec.name] += more
                sources.append(name)
    return records, sources


def write_report(figures: Path, *, policy: str = DEFAULT_POLICY, peers: Sequence[str] = PEERS, level: float = 0.95,
                 readme: Path | None = None, plot: Callable[[list[dict]], Any] | None = None) -> list[Table]:
    """Write ``quality_report.md`` (and, given ``plot`` (rows -> Figure), ``quality_forest.png``) into
    ``figures`` from its records; with ``readme``, replace the text between its markers too. For a
    policy other than the default the names carry the policy (``outputs``)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not peers:
        raise ValueError("peers names no policy")
    records, sources = load_all(figures)
    tables = build_tables(records, policy=policy, peers=peers, level=level)
    md_name, png_name, markers = outputs(policy)
    md_path, png_path = figures / md_name, figures / png_name
    rows = forest_rows(tables, policy)
    drawn = bool(rows) and plot is not None
    if drawn:
        fig = plot(rows)
        figures.mkdir(parents=True, exist_ok=True)
        fig.savefig(png_path, dpi=120, bbox_inches="tight", metadata={"Software": None})
    kw = dict(policy=policy, peers=peers, level=level, sources=sources)
    page = (f"## Quality at equal memory: {policy} against its peers\n\n"
            + render(tables, forest=_rel(png_path, md_path.parent) if drawn else None, **kw))
    md_path.write_text(page)
    print(f"wrote {md_path} ({len(tables)} tables)" + (f" and {png_path}" if drawn else ""))
    if readme is not None:
        body = render(tables, forest=_rel(png_path, readme.parent) if drawn else None, **kw) \
            if policy == DEFAULT_POLICY else render_summary(tables, policy=policy, level=level,
                                                            page=_rel(md_path, readme.parent))
        if replace_between_markers(readme, body, markers):
            print(f"updated {readme}")
    return tables
