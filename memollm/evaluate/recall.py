"""Conversation recall: does a fact stated early survive a long chat in a bounded cache?

``recall`` builds seeded synthetic conversations as a plain transcript (``User: ...`` /
``Assistant: ...`` lines: the bundled SmolLM2-135M answers from a transcript, while with
its chat template it fails the task even with the full cache). Turn 1 states a fact (a pass
key, a code word or a name); ``turns`` scripted small-talk exchanges follow; in the
*reviewed* variant the exchange after the first ``review_after`` small-talk turns is
replaced by a review: the user asks for the fact and the model answers (generating, so its
attention goes back to the fact; a review can only help while the fact is still cached,
hence early by default); in the *not-reviewed* variant one more small-talk exchange stands
there, so both have about the same length. The last turn asks for the fact again with the
answer started for the model (``Assistant: The pass key is``) and the model's next tokens
are checked for the fact.

Two things are reported apart, for each policy and budget, when the last question has been read:

* ``fact_cached``: every token of the fact as stated in turn 1 is still in the cache (what
  the policy controls, whatever the model can do); ``fact_share``: the share of them;
  ``copy_cached``: some copy of the fact (the review's answer too) is fully cached;
* ``accuracy``: the model's answer contains the fact (what it can do with that cache).

``full`` (no eviction) shows how far the model can solve the task at all. Evicting policies
run side by side as rows of one batch (``memollm.policies.PolicyRows``) on the same text;
each row generates its own answers. An answer is exactly as many tokens as the right answer
(so every row reads the same number of tokens and the rows stay one batch) and is judged on
whether it contains the fact. The small talk is scripted (read, not generated). The cache is
held to the budget at every forward pass: the conversation is read one message at a time,
and a message longer than the room left is read in chunks with eviction between them.

It is long because the benchmark writes its own conversations (scripted small talk, three
kinds of facts, the reviewed and not-reviewed variants) next to the runner and the summary.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from transformers import DynamicCache

from .attention import attached
from .policies import PolicyRows, make_policy
from .cache import cached_tokens, memory_layer_ids
from .chat import CHAT_SETTINGS
from .session import MemorySession

POLICIES_COMPARED = ("ebbinghaus", "ebbinghaus_tuned", "streaming", "h2o", "tova", "random")
"""Evicting policies compared by default; ``full`` (no eviction) is always added as the reference.
``ebbinghaus_fixed`` (no reinforcement) ranks tokens by age alone, exactly as ``streaming``
does, so it is left out by default."""

SYSTEM = "A conversation between a user and a helpful assistant."

SMALL_TALK = [
    ("What is a good way to start the morning?", "A glass of water, a short walk and a simple breakfast."),
    ("Any tips for sleeping better?", "Keep a regular bedtime and avoid screens late in the evening."),
    ("What should I cook for dinner tonight?", "A vegetable stir fry with rice is quick and tasty."),
    ("How do I keep a plant alive?", "Give it light, water it when the soil is dry, and do not overwater."),
    ("What is a fun weekend activity?", "A hike in a nearby park or a visit to a local museum."),
    ("How can I learn a new language?", "Practice a little every day and talk with native speakers."),
    ("Is it going to rain today?", "I cannot see the weather, but a quick look at a forecast will tell you."),
    ("What is a good book to read?", "A classic like Pride and Prejudice is a fine choice."),
    ("How do I make good coffee?", "Use fresh beans, grind them just before brewing, and use hot water."),
    ("What should I pack for a trip?", "Clothes for the weather, a charger, your documents and a water bottle."),
    ("How do I stay focused at work?", "Work in short blocks, take breaks, and silence your phone."),
    ("What is a healthy snack?", "An apple with a handful of nuts is a healthy snack."),
    ("How often should I exercise?", "About thirty minutes on most days of the week is a good goal."),
    ("What music helps me relax?", "Calm piano or soft acoustic music helps many people relax."),
    ("How do I clean a window without streaks?", "Use warm water with a little vinegar and dry it with a soft cloth."),
    ("What is a good gift for a friend?", "A book, a plant or a nice candle makes a thoughtful gift."),
    ("How do I remember names better?", "Repeat the name when you hear it and use it once in the conversation."),
    ("What is a quick way to tidy a room?", "Put things back in their places first, then clear the surfaces."),
    ("How can I save money on groceries?", "Plan your meals, write a list and buy what is in season."),
    ("What is a good stretch after sitting?", "Stand up, reach your arms overhead and gently bend to each side."),
    ("How do I write a polite email?", "Start with a greeting, keep it short, and thank the reader at the end."),
    ("What game can I play with kids?", "Hide and seek or a simple card game like snap is always fun."),
    ("How do I make tea taste better?", "Use fresh water, do not steep it too long, and try a slice of lemon."),
    ("What is a good habit to start?", "Writing down three things you are grateful for each evening."),
]
"""Scripted small talk: (user, assistant) pairs, each about 25-35 tokens as a transcript exchange."""


@dataclass(frozen=True)
class FactKind:
    name: str
    values: tuple[str, ...] | None  # None: a random 5-digit number
    statement: str  # "{}" is the value
    question: str
    answer_prefix: str


FACT_KINDS = {
    "number": FactKind("number", None, "The pass key is {}.", "What is the pass key?", "The pass key is"),
    "word": FactKind("word", ("tangerine", "violet", "harbor", "falcon", "marble", "orchid", "copper", "lantern",
                              "meadow", "glacier", "pepper", "canyon", "willow", "saffron", "comet", "juniper"),
                     "The code word is {}.", "What is the code word?", "The code word is"),
    "name": FactKind("name", ("Clara", "Oliver", "Amelia", "Hugo", "Nadia", "Felix", "Greta", "Tobias", "Ingrid",
                              "Mateo", "Elena", "Rafael", "Sofia", "Victor", "Leona", "Bruno"),
                     "My sister's name is {}.", "What is my sister's name?", "Your sister's name is"),
}


@dataclass
class Conversation:
    """One synthetic conversation: text to read and answers to generate, in order."""

    case: int
    kind: str
    value: str
    reviewed: bool
    steps: list[tuple[str, Any]] = field(default_factory=list)  # ("read", text) or ("answer", n_tokens)
    turns: int = 0
    review_after: int = 0
    seed: int = 0


def _answer_tokens(tokenizer, kind: FactKind, value: str) -> int:
    """Tokens of the right answer after the answer prefix (`` 48213.``)."""
    with_value = tokenizer(f"{kind.answer_prefix} {value}.", add_special_tokens=False).input_ids
    without = tokenizer(kind.answer_prefix, add_special_tokens=False).input_ids
    return max(1, len(with_value) - len(without))


def build_conversation(tokenizer, case: int, reviewed: bool, *, turns: int = 10, review_after: int = 1,
                       seed: int = 0, kinds: Sequence[str] = tuple(FACT_KINDS)) -> Conversation:
    """The seeded conversation ``case``: the same fact and small talk for both variants.

    ``turns`` small-talk exchanges follow the fact; after the first ``review_after`` of them
    comes the review (reviewed) or one more small-talk exchange (not reviewed). The last
    turn asks for the fact.
    """
    if turns < 2:
        raise ValueError(f"turns must be >= 2, got {turns}")
    if not 0 <= review_after < turns:
        raise ValueError(f"review_after must be in [0, turns), got {review_after}")
    if turns + 1 > len(SMALL_TALK):
        raise ValueError(f"turns must be <= {len(SMALL_TALK) - 1}, got {turns}")
    rng = random.Random(f"{seed}:{case}")
    kind = FACT_KINDS[kinds[case % len(kinds)]]
    value = str(rng.randint(10000, 99999)) if kind.values is None else rng.choice(kind.values)
    talk = rng.sample(SMALL_TALK, turns + 1)
    k = _answer_tokens(tokenizer, kind, value)
    conv = Conversation(case, kind.name, value, reviewed, turns=turns, review_after=review_after, seed=seed)
    conv.steps.append(("read", f"{SYSTEM}\n\nUser: Hi! Please remember this. {kind.statement.format(value)}\n"))
    conv.steps.append(("read", "Assistant: Sure, I will remember it.\n"))
    for i, (user, reply) in enumerate(talk[:turns]):
        if i == review_after:
            if reviewed:
                conv.steps.append(("read", f"User: Quick check: {kind.question[0].lower()}{kind.question[1:]}\n"
                                           f"Assistant: {kind.answer_prefix}"))
                conv.steps.append(("answer", k))
                conv.steps.append(("read", "\n"))
            else:
                conv.steps.append(("read", f"User: {talk[turns][0]}\n"))
                conv.steps.append(("read", f"Assistant: {talk[turns][1]}\n"))
        conv.steps.append(("read", f"User: {user}\n"))
        conv.steps.append(("read", f"Assistant: {reply}\n"))
    conv.steps.append(("read", f"User: {kind.question}\nAssistant: {kind.answer_prefix}"))
    conv.steps.append(("answer", k))
    return conv


def _token_spans(tokenizer, ids: Sequence[int], text: str) -> list[list[int]]:
    """Indices into ``ids`` of the tokens covering each occurrence of ``text``."""
    pieces = [tokenizer.decode([t]) for t in ids]
    ends, total = [], 0
    for p in pieces:
        total += len(p)
        ends.append(total)
    whole = "".join(pieces)
    spans, at = [], whole.find(text)
    while at >= 0:
        lo, hi = at, at + len(text)
        spans.append([i for i, e in enumerate(ends) if e > lo and e - len(pieces[i]) < hi])
        at = whole.find(text, at + 1)
    return spans


@torch.no_grad()
def run_conversation(llm, conv: Conversation, policies: Sequence[str], budget: int | None, *,
                     sink_tokens: int | None = None, recent_window: int | None = None,
                     seed: int = 0) -> list[dict[str, Any]]:
    """Play ``conv`` once with each policy (one batch row each; ``["full"]`` alone: no eviction).

    Returns one record per policy: the answers, ``correct``, ``fact_cached``, ``copy_cached``.
    """
    model, tok, device = llm.model, llm.tokenizer, llm.device
    policies = list(policies)
    full = [_spec(p)[1] for p in policies] == ["full"]
    if "full" in [_spec(p)[1] for p in policies] and not full:
        raise ValueError("'full' runs alone: pass policies=['full']")
    rows = len(policies)
    session = None
    cfg = llm.config
    if not full:
        if budget is None:
            raise ValueError("evicting policies need a budget")
        changes: dict[str, Any] = {"memory_budget": budget}
        if sink_tokens is not None:
            changes["sink_tokens"] = sink_tokens
        if recent_window is not None:
            changes["recent_window"] = recent_window
        cfg = cfg.replace(**CHAT_SETTINGS, **changes)  # as a chat runs: the rows' policies hold memory-layer state
        n_layers = len(memory_layer_ids(model, cfg))
        built = []
        for i, spec in enumerate(policies):
            _, name, pcfg = _spec(spec)
            pcfg = (pcfg or cfg).replace(memory_budget=cfg.memory_budget, sink_tokens=cfg.sink_tokens,
                                         recent_window=cfg.recent_window, policy=name)
            built.append(make_policy(name, pcfg, n_layers, seed=seed + i, device=device))
        session = MemorySession(model, "evict", cfg.replace(policy="streaming"), seed=seed,
                                policy=PolicyRows(built, 1))
    cache = DynamicCache(config=model.config)
    seqs: list[list[int]] = [[] for _ in range(rows)]  # every token read, per row (true position = index)
    pending = torch.zeros(rows, 0, dtype=torch.long, device=device)
    answers: list[list[list[int]]] = []
    fact_share = copy_cached = None
    peak = 0

    def cached() -> int:
        return cached_tokens(cache)

    def forward(x: torch.Tensor) -> torch.Tensor:
        nonlocal peak
        start = len(seqs[0])
        pos = torch.arange(start, start + x.shape[1], device=device)[None].expand(rows, -1)
        out = model(input_ids=x, cache=cache, use_cache=True, position_ids=pos)
        for r in range(rows):
            seqs[r].extend(x[r].tolist())
        peak = max(peak, cached())
        return out.logits[:, -1].float()

    def room() -> int:
        if full:
            return 1 << 30
        return max(budget - cached(), budget - cfg.sink_tokens - cfg.recent_window, 1)

    context = attached(model, session) if session is not None else _nullcontext()
    logits = None
    with context:
        steps = conv.steps
        for i, (what, arg) in enumerate(steps):
            if what == "read":
                new = torch.tensor([tok(arg, add_special_tokens=False).input_ids], device=device).expand(rows, -1)
                pending = torch.cat([pending, new], dim=1)
                if full and steps[i + 1][0] == "read":
                    continue  # no eviction: read everything up to the next answer in one pass (same result)
                x, pending = pending, pending[:, :0]
                done = 0
                while done < x.shape[1]:
                    n = min(room(), x.shape[1] - done)
                    logits = forward(x[:, done:done + n])
                    done += n
            else:
                if i == len(steps) - 1:  # the last question has been read: what does the cache hold now?
                    fact_share, copy_cached = _what_is_cached(tok, conv, seqs, session, rows)
                out = []
                for j in range(arg):
                    nxt = logits.argmax(-1, keepdim=True)
                    out.append(nxt)
                    if j < arg - 1:
                        logits = forward(nxt)
                gen = torch.cat(out, dim=1)
                pending = gen[:, -1:]
                answers.append([row.tolist() for row in gen])
    records = []
    for r, spec in enumerate(policies):
        policy = _spec(spec)[0]
        final = tok.decode(answers[-1][r], skip_special_tokens=True)
        review = tok.decode(answers[0][r], skip_special_tokens=True) if conv.reviewed else None
        records.append({
            "policy": policy, "budget": None if full else int(budget), "case": conv.case, "kind": conv.kind,
            "value": conv.value, "reviewed": conv.reviewed, "answer": final.strip(),
            "correct": conv.value in final, "review_answer": review.strip() if review is not None else None,
            "review_correct": (conv.value in review) if review is not None else None,
            "fact_cached": fact_share[r] == 1.0, "fact_share": round(fact_share[r], 4),
            "copy_cached": bool(copy_cached[r]),
            "conversation_tokens": len(seqs[r]) + 1, "peak_kv_tokens": peak,
            "turns": conv.turns, "review_after": conv.review_after, "seed": conv.seed,
            "sink_tokens": None if full else cfg.sink_tokens, "recent_window": None if full else cfg.recent_window,
        })
    return records


def _spec(spec) -> tuple[str, str, Any]:
    """A policy name, or a ``(label, name, MemoryConfig)`` tuple (a variant with its own settings)."""
    if isinstance(spec, str):
        return spec, spec, None
    label, name, cfg = spec
    return label, name, cfg


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


def _what_is_cached(tok, conv, seqs, session, rows) -> tuple[list[float], list[bool]]:
    """Per row: the share of the fact's tokens (as stated in turn 1) still cached; whether any
    copy of the fact (the review's answer too) is fully cached."""
    stated = _token_spans(tok, seqs[0], conv.value)[0]  # turn 1's statement comes first
    share, copy = [], []
    for r in range(rows):
        kept = set(session.positions[r].tolist()) if session is not None else set(range(len(seqs[r])))
        share.append(sum(p in kept for p in stated) / len(stated))
        copy.append(any(span and all(p in kept for p in span) for span in _token_spans(tok, seqs[r], conv.value)))
    return share, copy


# -- the measurement ---------------------------------------------------------------------------------
VARIANTS = {False: "not reviewed", True: "reviewed"}


def _interval(low: float, high: float) -> list[float] | None:
    """A JSON-safe interval: None where there is no spread to resample (one case)."""
    return None if math.isnan(low) or math.isnan(high) else [round(low, 4), round(high, 4)]


def summarize(records: list[dict], *, seed: int = 0) -> list[dict]:
    """Per policy, budget and variant: ``accuracy``, ``fact_cached`` and ``copy_cached`` rates
    with percentile-bootstrap 95% intervals over the cases (``*_ci``, ``memollm.stats``), the
    mean ``fact_share``; and per policy and budget the effect of the review (``variant``
    "review effect": reviewed minus not reviewed, paired by case)."""
    from .stats import bootstrap_ci, paired_difference

    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["policy"], r["budget"], r["reviewed"]), []).append(r)
    out = []
    for (policy, budget, reviewed), rs in groups.items():
        row: dict[str, Any] = {"policy": policy, "budget": budget, "variant": VARIANTS[reviewed], "cases": len(rs)}
        for key, name in (("correct", "accuracy"), ("fact_cached", "fact_cached"), ("copy_cached", "copy_cached")):
            mean, low, high = bootstrap_ci([float(r[key]) for r in rs], seed=seed)
            row[name] = round(mean, 4)
            row[f"{name}_ci"] = _interval(low, high)
        row["fact_share"] = round(sum(r["fact_share"] for r in rs) / len(rs), 4)
        if reviewed:
            row["review_accuracy"] = round(sum(bool(r["review_correct"]) for r in rs) / len(rs), 4)
        row["conversation_tokens"] = round(sum(r["conversation_tokens"] for r in rs) / len(rs), 1)
        out.append(row)
    for policy, budget in dict.fromkeys((p, b) for p, b, _ in groups):
        yes = {r["case"]: r for r in groups.get((policy, budget, True), [])}
        no = {r["case"]: r for r in groups.get((policy, budget, False), [])}
        both = sorted(set(yes) & set(no))
        if both:
            row = {"policy": policy, "budget": budget, "variant": "review effect", "cases": len(both)}
            for key, name in (("correct", "accuracy"), ("fact_cached", "fact_cached"), ("copy_cached", "copy_cached")):
                mean, low, high = paired_difference([float(yes[c][key]) for c in both],
                                                    [float(no[c][key]) for c in both], seed=seed)
                row[name] = round(mean, 4)
                row[f"{name}_ci"] = _interval(low, high)
            out.append(row)
    return out


def recall(llm, budgets: Sequence[int] = (96,), policies: Sequence = POLICIES_COMPARED, cases: int = 30,
           reviewed: Sequence[bool] = (False, True), seed: int = 0, *, turns: int = 10, review_after: int = 1,
           kinds: Sequence[str] = tuple(FACT_KINDS), sink_tokens: int | None = None,
           recent_window: int | None = 16, reference: bool = True, progress: bool = True) -> dict[str, Any]:
    """Recall of a fact stated in turn 1 at the end of a conversation, per policy, budget and variant.

    ``policies``: evicting policy names (or ``(label, name, MemoryConfig)`` variants); ``full``
    (no eviction) always runs as the reference. ``budgets``: KV-cache budgets in tokens (the
    default conversation is about 380 tokens, so 96 is a quarter). ``recent_window``: the newest
    tokens every policy keeps (16 by default here, so that most of a small budget is the
    policy's choice; ``None`` takes the model's config). Returns ``{"records", "summary",
    "settings"}``: one record per conversation and policy (``full`` with ``budget`` None) and
    ``summarize``'s rows. Every conversation is seeded by ``(seed, case)``; both variants of a
    case share the fact and the small talk. ``reference=False`` skips ``full`` (a second budget
    for conversations whose full-cache run is already known).
    """
    from tqdm.auto import tqdm

    if isinstance(cases, bool) or not isinstance(cases, int) or cases < 1:
        raise ValueError(f"cases must be an integer >= 1, got {cases!r}")
    for k in kinds:
        if k not in FACT_KINDS:
            raise ValueError(f"unknown fact kind {k!r}; choose from {sorted(FACT_KINDS)}")
    if not reviewed or any(v not in (False, True) for v in reviewed):
        raise ValueError(f"reviewed must list False and/or True, got {reviewed!r}")
    policies = [p for p in policies if _spec(p)[1] != "full"]
    cfg = llm.config.replace(**{k: v for k, v in (("sink_tokens", sink_tokens), ("recent_window", recent_window))
                                if v is not None})
    for budget in budgets:
        cfg.replace(memory_budget=budget)  # validates the budget against sinks + window
    records: list[dict] = []
    start, cpu = time.perf_counter(), time.process_time()
    jobs = [(c, v) for c in range(cases) for v in reviewed]
    if not policies and not reference:
        raise ValueError("nothing to run: no evicting policy and reference=False")
    bar = tqdm(total=len(jobs) * (int(reference) + (len(budgets) if policies else 0)), desc="recall", leave=False,
               disable=not progress)
    for case, variant in jobs:
        conv = build_conversation(llm.tokenizer, case, variant, turns=turns, review_after=review_after, seed=seed,
                                  kinds=kinds)
        if reference:
            records += run_conversation(llm, conv, ["full"], None, seed=seed)
            bar.update(1)
        for budget in budgets if policies else ():
            records += run_conversation(llm, conv, policies, budget, sink_tokens=cfg.sink_tokens,
                                        recent_window=cfg.recent_window, seed=seed)
            bar.update(1)
    bar.close()
    lengths = [r["conversation_tokens"] for r in records if r["policy"] == records[0]["policy"]]
    labels = (["full"] if reference else []) + [_spec(p)[0] for p in policies]
    settings = {"budgets": list(budgets), "policies": labels, "cases": cases,
                "reviewed": list(reviewed), "seed": seed, "turns": turns, "review_after": review_after,
                "kinds": list(kinds), "sink_tokens": cfg.sink_tokens, "recent_window": cfg.recent_window,
                "mean_conversation_tokens": round(sum(lengths) / len(lengths), 1),
                "config": cfg.to_dict(), "model": getattr(llm, "model_name", None),
                "torch_threads": torch.get_num_threads(),
                "seconds": round(time.perf_counter() - start, 1), "cpu_seconds": round(time.process_time() - cpu, 1)}
    return {"records": records, "summary": summarize(records, seed=seed), "settings": settings}


# -- tables and figures ----------------------------------------------------------------------------------
def _pct(value: float, ci=None) -> str:
    text = f"{100 * value:.0f}%"
    if ci is not None:
        text += f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]"
    return text


def summary_rows(result) -> list[dict]:
    """Summary rows from a ``recall`` result, a list of records (a ``--json`` file) or summary rows."""
    if isinstance(result, dict):
        return result["summary"]
    rows = list(result)
    return rows if rows and "variant" in rows[0] else summarize(rows)


def table(result, value: str = "accuracy") -> str:
    """A markdown table of ``value`` (``accuracy``, ``fact_cached`` or ``copy_cached``) per policy
    and budget: not reviewed, reviewed (with 95% intervals) and the review effect in points.
    ``result``: what ``recall`` returns, or its records (as written by ``--json``)."""
    rows = summary_rows(result)
    cells = {(r["policy"], r["budget"], r["variant"]): r for r in rows}
    keys = list(dict.fromkeys((r["policy"], r["budget"]) for r in rows))
    lines = [f"| policy | budget | {value.replace('_', ' ')}, not reviewed | reviewed | review effect |",
             "|---|---|---|---|---|"]
    for policy, budget in keys:
        vals = []
        for variant in ("not reviewed", "reviewed"):
            r = cells.get((policy, budget, variant))
            vals.append(_pct(r[value], r.get(f"{value}_ci")) if r else "")
        e = cells.get((policy, budget, "review effect"))
        if e and value in e:
            ci = e.get(f"{value}_ci")
            vals.append(f"{100 * e[value]:+.0f}" + (f" [{100 * ci[0]:+.0f}, {100 * ci[1]:+.0f}]" if ci else ""))
        else:
            vals.append("")
        lines.append(f"| {policy} | {'no limit' if budget is None else budget} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def merge(*results, seed: int = 0) -> dict[str, Any]:
    """One result from several runs (e.g. a second budget run with ``reference=False``), each a
    ``recall`` result or a list of records: the records together (a setting measured twice is
    an error), the summary recomputed, the runs' settings kept in a list."""
    records = [r for res in results for r in (res["records"] if isinstance(res, dict) else res)]
    keys = [(r["policy"], r["budget"], r["case"], r["reviewed"], r.get("seed", 0)) for r in records]
    if len(set(keys)) != len(keys):
        raise ValueError("the results overlap: some policy, budget, case and variant were measured twice")
    settings = [res["settings"] for res in results if isinstance(res, dict)]
    return {"records": records, "summary": summarize(records, seed=seed), "settings": settings}


def records_json(records: Sequence[dict]) -> str:
    """Records as JSON, one per line (the format of ``figures/eval_recall.json``)."""
    return "[\n" + ",\n".join(json.dumps(r, allow_nan=False) for r in records) + "\n]\n"






__all__ = ["FACT_KINDS", "POLICIES_COMPARED", "SMALL_TALK", "Conversation",
           "build_conversation", "merge", "records_json", "recall", "run_conversation", "summarize", "table"]
