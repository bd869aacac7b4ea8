"""Recall along a stream: facts stated early in a long running text, asked for after it.

Conversation recall (``recall``) asks for facts a few hundred tokens back, between small talk.
Here the facts sit in a passage of running text and are asked for after it, many budgets
later, with nothing but text in between: what a policy keeps of an old sentence that no
recent query looks at decides the answer, the case where a memory matters most.

Each case is one passage of about ``length`` tokens, cut at sentence boundaries: docs and
prose passages alternating (``memollm.texts.passages``), or consecutive pieces of a user's
text, from one split (``report`` and ``tune`` passages never share a token). Two to four
facts of distinct kinds (``recall.FACT_KINDS``: a pass key, a code word, names, a birthplace,
a room number; a value that occurs in the passage is never drawn) are stated as sentences at
seeded sentence boundaries in its first fifth (``STATED``). Each is reviewed never, once or
twice, as in ``recall``, by a question inserted as its own paragraph later in the text (before
40% of it, ``REVIEWED``) that the model answers, so its attention goes back to the fact. After
the passage every fact is asked for in turn, with the answer started (``Answer: The pass key
is``); the model's next tokens are checked for the value.

A case is played as ``recall`` plays a conversation (``recall.run_conversation``): policies
side by side as blocks of rows of one batch, ``full`` alone as the reference, the cache held
to a fraction of the case's length at every forward pass, text read in chunks as large as the
room left. The settings are ``recall``'s (a recent window of 16 tokens). With the default
length (a passage of ~512 tokens, ~620 with the facts and questions) a fact is stated 1.2-1.9
budgets before its question at half the case as the budget, and 2.3-3.9 at a quarter.

Records: one per (policy, budget fraction, case, fact), as ``recall``'s (``correct``,
``full_correct``, ``kept_share``, ``kept_share_by_layer``, ``reviews``, ``budget``,
``budget_fraction``, ``split``) with ``evaluation`` = ``recall_stream``, ``case`` (the
statistical unit; ids from ``recall.SPLITS``), ``passage`` (``docs/3``, ``notes.txt/0``),
``fact_position`` and ``review_positions`` (tokens), ``tokens_to_question`` (from the fact's
statement to its final question), ``budgets_to_question`` and ``case_tokens``.

The report-split record ``figures/eval_recall_stream.json`` was written by::

    memollm eval recall --stream --split report --cases 14 --budget-fractions 0.25,0.5 \\
        --policies ebbinghaus,ebbinghaus_seed,ebbinghaus_learned,streaming,h2o,tova,snapkv \\
        --threads 1 --json figures/eval_recall_stream.json

in 19 minutes on the shared 2-core CPU (14 passages rather than 16, to stay within 20 minutes).
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..config import ConfigError
from .recall import (FACT_KINDS, POLICIES_COMPARED, RECENT_WINDOW, SPLITS, STATE, Conversation, Fact,
                     _answer_tokens, play, recall_summary)
from .retrieval import _cut, _fillers
from .rows import spec

DEFAULT_LENGTH = 512
"""Passage tokens per case, about (cut at sentence boundaries; facts, reviews and questions add ~150).
A case of ~620 tokens costs ~5 s of one CPU thread per policy and budget fraction (~7 ms a token);
1,024 tokens would double it."""
BUDGET_FRACTIONS = (0.25, 0.5)
"""Budgets as fractions of each case's length, as for conversations: on the report split a fact
is stated 1.2-1.9 budgets before its question at a half, 2.3-3.9 at a quarter."""
STATED = 0.2
"""Facts are stated in the first fifth of the passage..."""
REVIEWED = 0.4
"""...and reviewed before 40% of it, so that at half the case as the budget, recency alone almost never
keeps a fact or its last review until the questions."""
MIN_OFFSET = 64
"""Characters of text before the first fact: a fact never sits among the attention sinks."""
QUESTION = "\n\nQuestion: {question}\nAnswer: {prefix}"
_PLACE = re.compile(r"(?<=[.!?;:])[\"')\]]*\s+(?=\S)|\n[ \t]*\n\s*")
"""Where a sentence or a clause starts (after . ! ? ; or :, or a blank line): facts and reviews go there."""


@dataclass
class StreamCase(Conversation):
    """One case, as the steps ``recall.run_conversation`` plays: ``turns`` are the passage's pieces
    and inserted sentences in order (a fact's statement is a turn of its own), turns ``>= turns``
    the final questions. ``conversation`` is the case id."""

    passage: str = ""

    def positions(self, tokenizer) -> list[int]:
        """The first token position of every step (each read step is tokenized on its own)."""
        out, at = [], 0
        for _, what, arg in self.steps:
            out.append(at)
            at += (len(tokenizer(arg, add_special_tokens=False).input_ids) if what == "read"
                   else self.facts[arg[0]].answer_tokens)
        return out


def _value(rng: random.Random, name: str, filler: str) -> str:
    kind = FACT_KINDS[name]
    if kind.values is None:
        while True:
            value = str(rng.randint(10000, 99999) if name == "number" else rng.randint(100, 999))
            if value not in filler:
                return value
    fresh = [v for v in kind.values if v.lower() not in filler.lower()]
    return rng.choice(fresh or list(kind.values))


def build_case(tokenizer, case: int, ids: torch.Tensor, passage: str) -> StreamCase:
    """The case numbered ``case`` (``recall.SPLITS`` gives each split its range) over the token ids
    of one passage; facts, values, places and reviews are seeded by the case number alone."""
    rng = random.Random(f"recall_stream:{case}")
    filler, _ = _cut(tokenizer, ids, ids.shape[0])
    bounds = [m.end() for m in _PLACE.finditer(filler)]
    n = rng.choice((2, 3, 4))
    early = [b for b in bounds if MIN_OFFSET <= b < STATED * len(filler)]
    if len(early) < n:  # long sentences: the n earliest places, if they leave room for the reviews
        early = [b for b in bounds if b >= MIN_OFFSET][:n]
        if len(early) < n or early[-1] >= REVIEWED * len(filler):
            raise ConfigError(f"passage {passage} has too few sentence boundaries early on for {n} facts: use a "
                              "longer length or a text with shorter sentences")
    kinds = rng.sample(list(FACT_KINDS), n)
    stated = sorted(rng.sample(early, n))
    start = rng.randrange(3)
    free = {b for b in bounds if b < REVIEWED * len(filler)} - set(stated)
    events: dict[int, tuple[str, int]] = {b: ("state", j) for j, b in enumerate(stated)}
    facts: list[Fact] = []
    for j, (name, at) in enumerate(zip(kinds, stated)):
        later = sorted(b for b in free if b > at)
        reviews = sorted(rng.sample(later, min((start + j) % 3, len(later))))
        free -= set(reviews)
        events.update({b: ("review", j) for b in reviews})
        facts.append(Fact(name, _value(rng, name, filler), -1, (), 0))
    steps: list[tuple[int, str, Any]] = []
    turn, last, stated_turn, review_turns = 0, 0, {}, {j: [] for j in range(n)}
    for b in sorted(events):
        what, j = events[b]
        kind, fact = FACT_KINDS[facts[j].kind], facts[j]
        ws = filler[:b][len(filler[:b].rstrip()):] or " "  # the break before the sentence that starts at b
        head = filler[last:b].rstrip()
        if head.strip():
            steps.append((turn, "read", head))
            turn += 1
        if what == "state":
            steps.append((turn, "read", ws + rng.choice(STATE).format(kind.statement.format(fact.value))))
            stated_turn[j] = turn
            last = b - len(ws)  # the passage goes on after the same break
        else:
            steps += [(turn, "read", QUESTION.format(question=kind.question, prefix=kind.answer_prefix)),
                      (turn, "answer", (j, "review")), (turn, "read", "\n\n")]
            review_turns[j].append(turn)
            last = b  # a new paragraph after the answer
        turn += 1
    steps.append((turn, "read", filler[last:].rstrip()))
    turns = turn + 1
    facts = [Fact(f.kind, f.value, stated_turn[j], tuple(review_turns[j]),
                  _answer_tokens(tokenizer, FACT_KINDS[f.kind], f.value)) for j, f in enumerate(facts)]
    for k, j in enumerate(rng.sample(range(n), n)):
        kind = FACT_KINDS[facts[j].kind]
        steps.append((turns + k, "read", QUESTION.format(question=kind.question, prefix=kind.answer_prefix)))
        steps.append((turns + k, "answer", (j, "final")))
    return StreamCase(case, facts, turns, steps, passage=passage)


def stream_cases(tokenizer, cases: int, *, split: str = "report", length: int = DEFAULT_LENGTH,
                 text: str | None = None, text_name: str = "text") -> list[StreamCase]:
    """``cases`` cases over distinct passages of ``split`` (docs and prose alternating), or over
    consecutive pieces of ``text`` (its ``split`` half; ``text_name`` names them in the records)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    out = []
    for i, (key, ids) in enumerate(_fillers(tokenizer, cases, length, split, text)):
        passage = key if text is None else f"{text_name}/{i}"
        out.append(build_case(tokenizer, SPLITS[split] + i, ids, passage))
    return out


def _stream_records(case: StreamCase, records: list[dict], tokenizer) -> list[dict]:
    """``run_conversation``'s records in this evaluation's terms: token positions, not turns."""
    at, size = case.positions(tokenizer), case.length(tokenizer)
    first = {t: at[i] for i, (t, _, _) in reversed(list(enumerate(case.steps)))}
    asked = {arg[0]: at[i] for i, (_, what, arg) in enumerate(case.steps) if what == "answer" and arg[1] == "final"}
    out = []
    for r in records:
        f = case.facts[r["fact"]]
        r = {k: v for k, v in r.items() if k not in ("evaluation", "conversation", "turn", "review_turns",
                                                      "turns_to_question", "conversation_tokens")}
        distance = asked[r["fact"]] - first[f.turn]
        out.append({"evaluation": "recall_stream", "case": case.conversation, "passage": case.passage, **r,
                    "fact_position": first[f.turn], "review_positions": [first[t] for t in f.review_turns],
                    "tokens_to_question": distance,
                    "budgets_to_question": None if r["budget"] is None else round(distance / r["budget"], 2),
                    "case_tokens": size})
    return out


def recall_stream(llm, budget_fractions: Sequence[float] = BUDGET_FRACTIONS, policies: Sequence = POLICIES_COMPARED,
                  cases: int = 16, *, split: str = "report", length: int = DEFAULT_LENGTH, text: str | None = None,
                  text_name: str = "text", seed: int = 0, sink_tokens: int | None = None,
                  recent_window: int | None = RECENT_WINDOW, config=None, progress: bool = True) -> dict[str, Any]:
    """Recall of facts stated early in ``cases`` passages and asked for after them, per policy and
    budget fraction; ``full`` always runs as the reference. ``text``: a user's text whose
    consecutive pieces of its ``split`` half are the passages. ``seed``: the random policy's and
    the bootstrap's (the cases depend on the split, the case number and the text only).
    Returns ``{"records", "summary", "settings"}`` as ``recall.recall`` does."""
    from tqdm.auto import tqdm

    if isinstance(cases, bool) or not isinstance(cases, int) or not 1 <= cases <= SPLITS["report"]:
        raise ValueError(f"cases must be an integer in [1, {SPLITS['report']}], got {cases!r}")
    if not budget_fractions or any(not 0 < b < 1 for b in budget_fractions):
        raise ValueError(f"budget_fractions must lie in (0, 1), got {list(budget_fractions)}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 256:
        raise ValueError(f"length must be an integer >= 256 (room for four facts and their reviews), got {length!r}")
    built = stream_cases(llm.tokenizer, cases, split=split, length=length, text=text, text_name=text_name)
    policies = [p for p in policies if spec(p)[1] != "full"]
    cfg = (config or llm.config).replace(**{k: v for k, v in (("sink_tokens", sink_tokens),
                                                              ("recent_window", recent_window)) if v is not None})
    records: list[dict] = []
    start, cpu = time.perf_counter(), time.process_time()
    bar = tqdm(total=cases * (1 + len(budget_fractions)), desc="recall along a stream", leave=False,
               disable=not progress)
    for case in built:
        records += _stream_records(case, play(llm, case, policies, budget_fractions, cfg, seed=seed, split=split,
                                              bar=bar), llm.tokenizer)
    bar.close()
    sizes = [r["case_tokens"] for r in records if r["policy"] == "full" and r["fact"] == 0]
    settings = {"evaluation": "recall_stream", "budget_fractions": list(budget_fractions),
                "policies": ["full"] + [spec(p)[0] for p in policies], "cases": cases, "split": split,
                "first_case": SPLITS[split], "length": length, "text": text_name if text is not None else None,
                "seed": seed, "sink_tokens": cfg.sink_tokens, "recent_window": cfg.recent_window,
                "granularity": cfg.granularity_for("evict"), "observation_window": cfg.observation_window,
                "observation_pool": cfg.observation_pool, "model": getattr(llm, "model_name", None),
                "mean_case_tokens": round(sum(sizes) / len(sizes), 1), "torch_threads": torch.get_num_threads(),
                "seconds": round(time.perf_counter() - start, 1), "cpu_seconds": round(time.process_time() - cpu, 1)}
    return {"records": records, "summary": recall_summary(records, seed=seed, item="case"), "settings": settings}


__all__ = ["BUDGET_FRACTIONS", "DEFAULT_LENGTH", "StreamCase", "build_case", "recall_stream", "stream_cases"]
