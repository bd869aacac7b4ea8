"""Conversation recall: which facts survive a long chat in a bounded cache, and do reviews help?

``recall`` builds seeded synthetic conversations as a plain transcript (``User: ...`` /
``Assistant: ...`` lines: the bundled SmolLM2-135M answers from a transcript, while with its
chat template it fails the task even with the full cache). Two to four facts (a pass key, a
code word, names, a birthplace, a room number) are stated at different turns; each is
reviewed never, once or twice by a later user turn that asks for it (the model answers, so
its attention goes back to the fact), at turns drawn at random, so the intervals vary.
Small talk from a pool of 48 scripted exchanges fills the other turns. At the end every fact
is asked for in turn, with the answer started for the model (``Assistant: The code word is``),
and the model's next tokens are checked for the fact.

The cache is held to a fraction of each conversation's length (``budget_fractions``: a
quarter and a half by default) at every forward pass: the conversation is read one message
at a time, a message longer than the room left in chunks with eviction between them. The
settings are the library's (per-layer ranking, the question-aware observation window), only
the recent window is 16 tokens here, so that most of a small budget is the policy's choice.
Evicting policies run side by side as blocks of rows of one batch on the same text
(``memollm.policies.PolicyRows``); each row generates its own answers, each exactly as many
tokens as the right answer, so the rows stay one batch. ``full`` (no eviction) runs alone.

Records: one per (policy, budget fraction, conversation, fact), with ``reviews`` (0, 1, 2),
``kept_share`` (the share of the fact's tokens, as stated, still cached in at least one layer
when its last question has been read), ``kept_share_by_layer`` (per full-attention layer),
``correct`` and ``full_correct`` (the full cache answered the same fact). The conversation
is the statistical unit: summaries average a conversation's facts, then bootstrap over
conversations. Conversations are numbered by ``split``: ``tune`` (ids from 0, for choosing
wording and settings) and ``report`` (ids from 100000, for the numbers reported), so the
two never share a conversation. It is long because it writes its own conversations (48
small-talk exchanges, six kinds of facts) next to the runner and the summary.
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

from ..attention import attached
from ..cache import cached_tokens
from ..reading import decode, read, room
from ..views import token_spans
from .rows import rows_session, spec

POLICIES_COMPARED = ("ebbinghaus", "streaming", "h2o", "tova", "random")
"""Evicting policies compared by default; ``full`` (no eviction) always runs as the reference."""

SPLITS = {"tune": 0, "report": 100_000}
"""First conversation id of each split: ``tune`` for choosing settings, ``report`` for the numbers."""

BUDGET_FRACTIONS = (0.25, 0.5)
RECENT_WINDOW = 16
"""Recent tokens every policy keeps here: short, so that a fact survives by its rank, not by recency."""
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
    ("How do I fix a squeaky door?", "A drop of oil on the hinges usually stops the squeak."),
    ("What should I do on a rainy afternoon?", "Bake something simple, read a book or call an old friend."),
    ("How can I drink more water?", "Keep a bottle on your desk and refill it every time it is empty."),
    ("What is an easy bread to bake?", "A no-knead loaf needs only flour, water, salt and a little yeast."),
    ("How do I stop procrastinating?", "Start with the smallest step and work on it for five minutes."),
    ("What is a nice hobby for the evening?", "Drawing, knitting or a jigsaw puzzle are calm evening hobbies."),
    ("How should I prepare for a job interview?", "Read about the company and practice answers to common questions."),
    ("How do I keep my laptop fast?", "Close programs you do not use and keep some free space on the disk."),
    ("What is a good way to meet new people?", "Join a club or a class about something you enjoy."),
    ("How do I keep bread fresh?", "Store it in a paper bag at room temperature, or freeze slices."),
    ("What can I plant on a balcony?", "Herbs like basil and mint grow well in small pots on a balcony."),
    ("How do I calm down before a talk?", "Breathe slowly, practice the opening lines and arrive early."),
    ("What is a good breakfast on a busy day?", "Oats with fruit or yogurt are quick and keep you full."),
    ("How long should a nap be?", "Twenty minutes is enough to feel rested without feeling groggy."),
    ("How do I keep my desk organised?", "Keep only what you use every day on it and clear it each evening."),
    ("What is a good way to learn to cook?", "Start with a few simple recipes and cook each one several times."),
    ("How can I make my walk more interesting?", "Try a new route or listen to a podcast while you walk."),
    ("What should I do when I feel tired at work?", "Stand up, stretch, drink some water and get a little fresh air."),
    ("How do I choose a good melon?", "Pick one that feels heavy for its size and smells sweet."),
    ("How can I keep in touch with old friends?", "Send a short message now and then and plan a call each month."),
    ("What is a simple way to save energy at home?", "Turn off lights you do not need and wash clothes in cold water."),
    ("How do I take better photos with my phone?", "Use natural light, keep the lens clean and hold the phone steady."),
    ("What should I read to learn about history?", "A short general history is a good start before any details."),
    ("How do I make a room feel cosy?", "Warm lamps, a soft blanket and a few plants make a room feel cosy."),
]
"""Scripted small talk: (user, assistant) pairs, each about 25-35 tokens as a transcript exchange."""


@dataclass(frozen=True)
class FactKind:
    name: str
    values: tuple[str, ...] | None  # None: a random 5-digit number
    statement: str  # "{}" is the value
    question: str
    answer_prefix: str


FACT_KINDS = {k.name: k for k in (
    FactKind("number", None, "The pass key is {}.", "What is the pass key?", "The pass key is"),
    FactKind("word", ("tangerine", "violet", "harbor", "falcon", "marble", "orchid", "copper", "lantern", "meadow",
                      "glacier", "pepper", "canyon", "willow", "saffron", "comet", "juniper"),
             "The code word is {}.", "What is the code word?", "The code word is"),
    FactKind("sister", ("Clara", "Oliver", "Amelia", "Hugo", "Nadia", "Felix", "Greta", "Tobias", "Ingrid", "Mateo",
                        "Elena", "Rafael", "Sofia", "Victor", "Leona", "Bruno"),
             "My sister's name is {}.", "What is my sister's name?", "Your sister's name is"),
    FactKind("dog", ("Biscuit", "Pepper", "Rocket", "Waffle", "Maple", "Ziggy", "Nugget", "Pickles", "Barnaby",
                     "Muffin", "Sprout", "Domino"),
             "My dog is called {}.", "What is my dog called?", "Your dog is called"),
    FactKind("city", ("Lisbon", "Oslo", "Krakow", "Valencia", "Porto", "Dublin", "Zurich", "Bergen", "Seville",
                      "Tallinn", "Ghent", "Lyon"),
             "I was born in {}.", "Where was I born?", "You were born in"),
    FactKind("room", None, "My hotel room number is {}.", "What is my hotel room number?",
             "Your hotel room number is"),
)}
STATE = ("Please remember this: {}", "One more thing to remember: {}", "Also, note this: {}")
REVIEW = ("Quick check: {}", "Remind me: {}")


@dataclass(frozen=True)
class Fact:
    kind: str
    value: str
    turn: int  # the user turn that states it
    review_turns: tuple[int, ...]  # the user turns that ask for it again
    answer_tokens: int  # tokens generated for its answers (``_answer_tokens``)

    @property
    def reviews(self) -> int:
        return len(self.review_turns)


@dataclass
class Conversation:
    """One seeded conversation: ``steps`` are ``(turn, "read", text)`` or ``(turn, "answer", (fact,
    "review" | "final"))`` in order; turn -1 is the system line, turns ``>= turns`` ask the final questions."""

    conversation: int
    facts: list[Fact]
    turns: int
    steps: list[tuple[int, str, Any]] = field(default_factory=list)

    def user_text(self, turn: int) -> str:
        """What was read at ``turn`` (user message and scripted reply; answers are generated)."""
        return "".join(arg for t, what, arg in self.steps if t == turn and what == "read")

    def length(self, tokenizer) -> int:
        """Tokens the conversation reads and generates (each message is tokenized on its own)."""
        return sum(len(tokenizer(arg, add_special_tokens=False).input_ids) if what == "read"
                   else self.facts[arg[0]].answer_tokens for _, what, arg in self.steps)


def _answer_tokens(tokenizer, kind: FactKind, value: str) -> int:
    """Tokens generated for an answer: the right answer's after the prefix (`` 48213.``) and two
    more, as the model may first open a quote."""
    with_value = tokenizer(f"{kind.answer_prefix} {value}.", add_special_tokens=False).input_ids
    return max(1, len(with_value) - len(tokenizer(kind.answer_prefix, add_special_tokens=False).input_ids)) + 2


def _lower_first(text: str) -> str:
    return text[0].lower() + text[1:]


def build_conversation(tokenizer, conversation: int, *, turns: int = 12) -> Conversation:
    """The seeded conversation number ``conversation`` (``SPLITS`` gives each split its range).

    2-4 facts of distinct kinds are stated at distinct turns in the first half; their review
    counts run through 0, 1, 2 from a random start (so every count occurs at every statement
    rank across conversations); each review sits at a random free turn after the statement.
    """
    if turns < 8:
        raise ValueError(f"turns must be >= 8 (room for 4 facts and their reviews), got {turns}")
    rng = random.Random(f"recall:{conversation}")
    n = rng.choice((2, 3, 4))
    kinds = rng.sample(list(FACT_KINDS), n)
    stated = sorted(rng.sample(range(turns // 2), n))
    start = rng.randrange(3)
    free = set(range(turns)) - set(stated)
    facts = []
    for j, (name, turn) in enumerate(zip(kinds, stated)):
        kind = FACT_KINDS[name]
        if kind.values is not None:
            value = rng.choice(kind.values)
        else:
            value = str(rng.randint(10000, 99999) if name == "number" else rng.randint(100, 999))
        later = sorted(t for t in free if t > turn)
        review_turns = tuple(sorted(rng.sample(later, min((start + j) % 3, len(later)))))
        free -= set(review_turns)
        facts.append(Fact(name, value, turn, review_turns, _answer_tokens(tokenizer, kind, value)))
    talk = iter(rng.sample(SMALL_TALK, len(free)))
    conv = Conversation(conversation, facts, turns)
    conv.steps.append((-1, "read", f"{SYSTEM}\n\n"))
    by_turn = {f.turn: i for i, f in enumerate(facts)}
    reviews = {t: i for i, f in enumerate(facts) for t in f.review_turns}
    for t in range(turns):
        if t in by_turn:
            fact = facts[by_turn[t]]
            said = rng.choice(STATE).format(FACT_KINDS[fact.kind].statement.format(fact.value))
            conv.steps += [(t, "read", f"User: {said}\n"), (t, "read", "Assistant: Sure, I will remember it.\n")]
        elif t in reviews:
            i = reviews[t]
            kind = FACT_KINDS[facts[i].kind]
            ask = rng.choice(REVIEW).format(_lower_first(kind.question))
            conv.steps += [(t, "read", f"User: {ask}\nAssistant: {kind.answer_prefix}"), (t, "answer", (i, "review")),
                           (t, "read", "\n")]
        else:
            user, reply = next(talk)
            conv.steps += [(t, "read", f"User: {user}\n"), (t, "read", f"Assistant: {reply}\n")]
    order = rng.sample(range(n), n)
    for k, i in enumerate(order):
        kind = FACT_KINDS[facts[i].kind]
        conv.steps.append((turns + k, "read", f"User: {kind.question}\nAssistant: {kind.answer_prefix}"))
        conv.steps.append((turns + k, "answer", (i, "final")))
        if k < n - 1:
            conv.steps.append((turns + k, "read", "\n"))
    return conv


class _Transcript:
    """One conversation read into one cache by every row alike: true positions, the room rule
    while a session evicts, and greedy answers from the package's decoder."""

    def __init__(self, model, rows: int, session, cfg) -> None:
        self.model, self.rows, self.session, self.cfg = model, rows, session, cfg
        self.device = next(model.parameters()).device
        self.cache = DynamicCache(config=model.config)
        self.seqs: list[int] = []  # every token of row 0 read so far (true position = index)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(len(self.seqs), len(self.seqs) + x.shape[1], device=self.device)[None].expand(self.rows, -1)
        out = self.model(input_ids=x, cache=self.cache, use_cache=True, position_ids=pos)
        self.seqs.extend(x[0].tolist())
        return out.logits.float()

    def read(self, x: torch.Tensor) -> torch.Tensor:
        limit = None if self.session is None else (lambda: room(self.cfg, cached_tokens(self.cache)))
        return read(self.step, x, limit=limit)

    def answer(self, logits: torch.Tensor, n: int) -> torch.Tensor:
        return decode(self.step, logits, n).tokens


@torch.no_grad()
def run_conversation(llm, conv: Conversation, policies: Sequence, budget: int | None, *,
                     config=None, seed: int = 0) -> list[dict[str, Any]]:
    """Play ``conv`` once with each policy (one block of batch rows each; ``["full"]`` alone: no
    eviction) at ``budget`` tokens. ``config``: the base settings (default: the llm's).
    Returns one record per policy and fact, in the order of ``facts``."""
    tok = llm.tokenizer
    specs = [spec(p) for p in policies]
    full = [s[1] for s in specs] == ["full"]
    if "full" in [s[1] for s in specs] and not full:
        raise ValueError("'full' runs alone: pass policies=['full']")
    cfg, session = config or llm.config, None
    if not full:
        if budget is None:
            raise ValueError("evicting policies need a budget")
        cfg = cfg.replace(memory_budget=budget)
        session = rows_session(llm.model, specs, cfg, seed=seed)
    talk = _Transcript(llm.model, len(specs), session, cfg)
    starts: dict[int, int] = {}  # turn -> first position read at that turn
    pending = torch.zeros(len(specs), 0, dtype=torch.long, device=talk.device)
    answers: dict[tuple[int, str], list[str]] = {}
    kept: dict[int, list[tuple[float, list[float] | None]]] = {}
    logits, steps = None, conv.steps
    with attached(llm.model, session) if session is not None else torch.no_grad():
        for i, (turn, what, arg) in enumerate(steps):
            if what == "read":
                starts.setdefault(turn, len(talk.seqs) + pending.shape[1])
                new = torch.tensor([tok(arg, add_special_tokens=False).input_ids], device=talk.device)
                pending = torch.cat([pending, new.expand(len(specs), -1)], dim=1)
                if not (full and steps[i + 1][1] == "read"):  # no eviction: read up to the next answer in one pass
                    logits, pending = talk.read(pending), pending[:, :0]
                continue
            fact, stage = arg
            if stage == "final":  # its question has been read: what does the cache hold of the fact?
                kept[fact] = _kept(tok, conv, fact, talk.seqs, starts, session, len(specs))
            gen = talk.answer(logits, conv.facts[fact].answer_tokens)
            pending = gen[:, -1:]
            answers[(fact, stage)] = [tok.decode(r, skip_special_tokens=True).strip() for r in gen.tolist()]
    return _records(conv, specs, budget if not full else None, answers, kept, len(talk.seqs) + 1)


def _records(conv: Conversation, specs, budget: int | None, answers, kept, tokens: int) -> list[dict[str, Any]]:
    records = []
    for r, (label, _, _) in enumerate(specs):
        for i, f in enumerate(conv.facts):
            answer = answers[(i, "final")][r]
            share, by_layer = kept[i][r]
            records.append({
                "evaluation": "recall", "policy": label, "budget": budget, "conversation": conv.conversation,
                "fact": i, "kind": f.kind, "value": f.value, "turn": f.turn, "review_turns": list(f.review_turns),
                "reviews": f.reviews, "answer": answer, "correct": f.value.lower() in answer.lower(),
                "kept_share": round(share, 4), "kept_share_by_layer": by_layer,
                "turns_to_question": conv.turns - f.turn, "conversation_tokens": tokens,
            })
    return records


def _kept(tok, conv: Conversation, fact: int, seqs: list[int], starts: dict[int, int], session,
          rows: int) -> list[tuple[float, list[float] | None]]:
    """Per row: the share of the fact's stated tokens held by at least one layer, and by each layer."""
    f = conv.facts[fact]
    lo, hi = starts[f.turn], starts.get(f.turn + 1, len(seqs))
    span = [lo + p for p in token_spans(tok.decode, seqs[lo:hi], f.value)[0]]
    if session is None:
        return [(1.0, None)] * rows
    out = []
    for r in range(rows):
        layers = [set(p) for p in session.layer_positions(r).values()]
        union = set().union(*layers)
        out.append((sum(p in union for p in span) / len(span),
                    [round(sum(p in h for p in span) / len(span), 4) for h in layers]))
    return out


# -- the measurement ---------------------------------------------------------------------------------
def play(llm, conv: Conversation, policies: Sequence, budget_fractions: Sequence[float], cfg, *, seed: int,
         split: str, bar) -> list[dict[str, Any]]:
    """One case read by the full cache, then by the policies side by side at each budget fraction of
    its length: its records, each with its fraction, whether the full cache answered that fact, and
    the split (``bar`` advances once per reading)."""
    ref = run_conversation(llm, conv, ["full"], None, config=cfg, seed=seed)
    bar.update(1)
    right = {r["fact"]: r["correct"] for r in ref}
    runs = [(None, ref)]
    for fraction in budget_fractions if policies else ():
        budget = round(fraction * conv.length(llm.tokenizer))
        cfg.check_budget(budget)
        runs.append((fraction, run_conversation(llm, conv, policies, budget, config=cfg, seed=seed)))
        bar.update(1)
    return [{**r, "budget_fraction": fraction, "full_correct": right[r["fact"]], "split": split}
            for fraction, rs in runs for r in rs]


def recall(llm, budget_fractions: Sequence[float] = BUDGET_FRACTIONS, policies: Sequence = POLICIES_COMPARED,
           cases: int = 30, *, split: str = "report", seed: int = 0, turns: int = 12, sink_tokens: int | None = None,
           recent_window: int | None = RECENT_WINDOW, config=None, progress: bool = True) -> dict[str, Any]:
    """Recall of several facts at the end of ``cases`` conversations, per policy and budget fraction.

    ``policies``: evicting policy names (or ``(label, name, MemoryConfig)`` variants); ``full``
    always runs as the reference. ``split``: ``tune`` or ``report`` conversations (``SPLITS``).
    ``seed``: the random policy's and the bootstrap's seed (the conversations depend on the
    split and the case only). Returns ``{"records", "summary", "settings"}``.
    """
    from tqdm.auto import tqdm

    if isinstance(cases, bool) or not isinstance(cases, int) or not 1 <= cases <= SPLITS["report"]:
        raise ValueError(f"cases must be an integer in [1, {SPLITS['report']}], got {cases!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if not budget_fractions or any(not 0 < b < 1 for b in budget_fractions):
        raise ValueError(f"budget_fractions must lie in (0, 1), got {list(budget_fractions)}")
    policies = [p for p in policies if spec(p)[1] != "full"]
    cfg = (config or llm.config).replace(**{k: v for k, v in (("sink_tokens", sink_tokens),
                                                              ("recent_window", recent_window)) if v is not None})
    records: list[dict] = []
    start, cpu = time.perf_counter(), time.process_time()
    bar = tqdm(total=cases * (1 + len(budget_fractions)), desc="recall", leave=False, disable=not progress)
    for case in range(cases):
        conv = build_conversation(llm.tokenizer, SPLITS[split] + case, turns=turns)
        records += play(llm, conv, policies, budget_fractions, cfg, seed=seed, split=split, bar=bar)
    bar.close()
    lengths = [r["conversation_tokens"] for r in records if r["policy"] == "full" and r["fact"] == 0]
    settings = {"budget_fractions": list(budget_fractions), "policies": ["full"] + [spec(p)[0] for p in policies],
                "cases": cases, "split": split, "first_conversation": SPLITS[split], "seed": seed, "turns": turns,
                "sink_tokens": cfg.sink_tokens, "recent_window": cfg.recent_window,
                "granularity": cfg.granularity_for("evict"), "observation_window": cfg.observation_window,
                "observation_pool": cfg.observation_pool, "model": getattr(llm, "model_name", None),
                "mean_conversation_tokens": round(sum(lengths) / len(lengths), 1),
                "torch_threads": torch.get_num_threads(),
                "seconds": round(time.perf_counter() - start, 1), "cpu_seconds": round(time.process_time() - cpu, 1)}
    return {"records": records, "summary": recall_summary(records, seed=seed), "settings": settings}


# -- summaries and tables ----------------------------------------------------------------------------------
VALUES = {"correct": "answer correct", "kept_share": "share of the fact's tokens cached (any layer)",
          "correct_if_full": "answer correct, facts the full cache answered"}
BY = ("policy", "budget_fraction", "reviews")


def conversation_means(records: Sequence[dict], value: str = "correct", *, item: str = "conversation") -> list[dict]:
    """One row per (policy, budget fraction, reviews, conversation): the mean of ``value`` over
    the conversation's facts in that cell (the statistical unit). ``correct_if_full``: ``correct``
    over the facts the full cache answered (a policy cannot do better than the model). ``item``:
    the record key of the unit (``case`` for recall along a stream)."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        if value == "correct_if_full" and not r["full_correct"]:
            continue
        key = (*(r[k] for k in BY), r[item])
        groups.setdefault(key, []).append(float(r["correct" if value == "correct_if_full" else value]))
    order = {p: i for i, p in enumerate(dict.fromkeys(r["policy"] for r in records))}
    keys = sorted(groups, key=lambda k: (order[k[0]], -1 if k[1] is None else k[1], k[2], k[3]))
    return [{**dict(zip(BY, k)), item: k[-1], value: sum(groups[k]) / len(groups[k])} for k in keys]


def recall_summary(records: Sequence[dict], *, seed: int = 0, item: str = "conversation") -> dict[str, list[dict]]:
    """Per value of ``VALUES``: ``memollm.stats.summarize`` rows by policy, budget fraction and
    reviews, bootstrapped over conversations (or another ``item``), with the paired difference
    to ``streaming``."""
    from ..stats import summarize as stat_rows

    def clean(row: dict) -> dict:  # JSON-safe: no interval (NaN) where one conversation holds the cell
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}

    out = {}
    for value in VALUES:
        rows = conversation_means(records, value, item=item)
        if rows:
            out[value] = [clean(r) for r in stat_rows(rows, value, by=BY, item=item,
                                                      baselines=("streaming",), lower_is_better=False, seed=seed)]
    return out


def recall_table(result, value: str = "correct") -> str:
    """A markdown table of ``value`` (a key of ``VALUES``); ``result``: what ``recall`` returns, or its records."""
    from ..stats import markdown_table

    summary = result["summary"] if isinstance(result, dict) else recall_summary(result)
    rows = [{**r, "budget_fraction": "full" if r["budget_fraction"] is None else r["budget_fraction"]}
            for r in summary.get(value, [])]
    return markdown_table(rows, by=BY, value_label=VALUES[value], digits=2) if rows else "(no records)"


def records_json(records: Sequence[dict]) -> str:
    """Records as JSON, one per line."""
    return "[\n" + ",\n".join(json.dumps(r, allow_nan=False) for r in records) + "\n]\n"


__all__ = ["BUDGET_FRACTIONS", "FACT_KINDS", "POLICIES_COMPARED", "RECENT_WINDOW", "SMALL_TALK", "SPLITS", "Conversation", "Fact",
           "build_conversation", "conversation_means", "records_json", "recall", "recall_summary", "run_conversation",
           "recall_table"]
