"""Retrieval with independent documents (RULER-style): passkey, several keys, variable tracking.

Every case is its own document: a distinct passage of the offline texts (or a piece of the
user's text) cut at sentence boundaries, with its own needle wording and question wording,
so a policy's accuracy is measured over documents, not over copies of one filler loop.
The prompt is read in one pass and compressed after it (question-aware): each document is
prefilled once with the full cache, and every policy compresses a copy of that prefill side
by side (row blocks); the ``full`` reference answers from the uncompressed cache.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList

from ..attention import attached
from ..config import ConfigError, MemoryConfig
from ..texts import passages, text_segments
from .core import eval_config
from .passkey import passkey_budget
from .rows import PrefillCapture, copy_prefill, greedy, rows_from_prefill, spec

TASKS = ("passkey", "multikey", "vartrack")

DEFAULT_POLICIES = ("ebbinghaus", "streaming", "h2o", "tova", "random")
"""Evicting policies compared by default; ``full`` (no eviction) is always added as the reference."""

# Calibrated on the tune split only, with the bundled SmolLM2-135M-Instruct:
#   python -m memollm eval retrieval --split tune --cases 12 --policies streaming,tova,h2o,ebbinghaus --threads 1
# The full cache answered passkey 10/12, multikey (3 keys) 6/12, vartrack (1 hop, chained answer) 8/12;
# tova at a fraction of 0.125 answered 3/10, 2/6 and 3/8 of those (not trivially easy). Without the
# chained answer (``_answer``) one hop was answered 1/12: the model names the copied variable and stops.
DEFAULT_LENGTH = 1000  # prompt tokens (about: the filler is cut at sentence boundaries)
MULTIKEY_KEYS = 3  # keys of the same kind; one is asked for, the others are distractors
VARTRACK_HOPS = 1  # copies after the first assignment (``VAR B = VAR A``)
MIN_FILLER = 64  # filler tokens a document needs at least

INTRO = {
    "passkey": "A pass key is hidden in the text below. Find it and remember it; you will be asked for it.\n\n",
    "multikey": "Several codes are hidden in the text below. Remember every one; you will be asked for one.\n\n",
    "vartrack": "Variable assignments are hidden in the text below. Track their values; you will be asked "
                "for one.\n\n",
}

NEEDLES = {
    "passkey": ("The pass key is {key}. Remember it.", "Remember this: the secret pass key is {key}.",
                "Important: the pass key to keep in mind is {key}.", "Note that the pass key is {key}."),
    "multikey": ("The code for the {label} is {key}.", "Remember: the code that opens the {label} is {key}.",
                 "Important: the {label} has the code {key}.", "Note that the code of the {label} is {key}."),
    "vartrack": ("VAR {name} = {value}.", "Set VAR {name} = {value}.", "Remember: VAR {name} = {value}.",
                 "Important: VAR {name} = {value}."),
}
"""Needle templates; ``{value}`` of a vartrack copy is ``VAR <earlier name>``."""

QUESTIONS = {
    "passkey": ("What is the pass key?", "Which pass key was hidden in the text?",
                "What was the secret pass key mentioned above?", "Recall the pass key from the text."),
    "multikey": ("What is the code for the {label}?", "Which code opens the {label}?",
                 "Recall the code of the {label} from the text.", "What code was given for the {label}?"),
    "vartrack": ("What is the value of VAR {name}?", "Which number does VAR {name} hold?",
                 "Recall the value of VAR {name} from the text.", "What number was VAR {name} set to?"),
}

ANSWER = {"passkey": "Answer: The pass key is", "multikey": "Answer: The code for the {label} is",
          "vartrack": "Answer: VAR {name} ="}
"""The answer prefix after the question: the model continues it with the number."""

COLOURS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple", "grey", "brown")
THINGS = ("door", "safe", "locker", "gate", "box", "vault")

# Where a sentence or a paragraph starts (after sentence punctuation, or after a blank line; a
# single line break inside the docs' hard-wrapped paragraphs is no boundary): needles go there.
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[A-Z0-9*])|\n[ \t]*\n\s*")


@dataclass(frozen=True)
class RetrievalCase:
    """One document: ``prompt`` = intro + filler with ``needles`` inserted at ``offsets`` (characters
    into ``prompt``) + question + answer prefix; ``expected`` is the number the answer must contain."""

    task: str
    case: int
    document: str  # stable key of the filler, e.g. "docs/3"
    prompt: str
    needles: tuple[str, ...]
    offsets: tuple[int, ...]
    depths: tuple[float, ...]  # where each needle sits in the filler, 0 = start, 1 = end
    question: str  # the question and the answer prefix that end the prompt
    expected: str
    filler: str  # the filler text, without needles


def _check(task_list: Sequence[str], fractions: Sequence[float]) -> None:
    for t in task_list:
        if t not in TASKS:
            raise ConfigError(f"unknown retrieval task {t!r}; known: {', '.join(TASKS)}")
    for f in fractions:
        if not (isinstance(f, (int, float)) and 0 < f <= 1):
            raise ConfigError(f"budget fractions must be in (0, 1], got {f!r}")


def _needles(task: str, rng: random.Random, keys: int, hops: int) -> tuple[list[str], str, str]:
    """The needle sentences in document order, the question (with answer prefix), the expected number."""
    number = lambda: rng.randint(10000, 99999)  # noqa: E731
    pick = lambda: rng.randrange(len(NEEDLES[task]))  # noqa: E731
    q = rng.choice(QUESTIONS[task])
    if task == "passkey":
        key = number()
        return [NEEDLES[task][pick()].format(key=key)], f"{q}\n{ANSWER[task]}", str(key)
    if task == "multikey":
        thing = rng.choice(THINGS)
        labels = [f"{c} {thing}" for c in rng.sample(COLOURS, keys)]
        values = rng.sample(range(10000, 100000), keys)
        needles = [NEEDLES[task][pick()].format(label=l, key=v) for l, v in zip(labels, values)]
        asked = rng.randrange(keys)
        fmt = {"label": labels[asked]}
        return needles, f"{q.format(**fmt)}\n{ANSWER[task].format(**fmt)}", str(values[asked])
    names: list[str] = []
    while len(names) < hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=3))
        if name not in names:
            names.append(name)
    value = number()
    needles = [NEEDLES[task][pick()].format(name=names[0], value=value)]
    needles += [NEEDLES[task][pick()].format(name=b, value=f"VAR {a}") for a, b in zip(names, names[1:])]
    fmt = {"name": names[-1]}
    return needles, f"{q.format(**fmt)}\n{ANSWER[task].format(**fmt)}", str(value)


def _fillers(tokenizer, n: int, length: int, split: str, text: str | None) -> list[tuple[str, torch.Tensor]]:
    """``n`` distinct (key, token ids) fillers of ``length`` tokens: alternating docs and prose
    passages of ``split``, or consecutive pieces of ``text``."""
    if text is not None:
        return [(f"text/{i}", ids) for i, ids in enumerate(text_segments(tokenizer, text, length, n, split))]
    per = {s: passages(tokenizer, length, (n + 1 - i) // 2, sources=(s,), split=split) if (n + 1 - i) // 2 else []
           for i, s in enumerate(("docs", "prose"))}
    return [(per[s][i // 2].key, per[s][i // 2].ids) for i in range(n) for s in [("docs", "prose")[i % 2]]]


def _cut(tokenizer, ids: torch.Tensor, room: int) -> tuple[str, list[int]]:
    """The passage decoded, cut to whole sentences of at most ``room`` tokens; the boundaries kept."""
    raw = tokenizer.decode(ids.tolist())
    starts = [m.end() for m in _BOUNDARY.finditer(raw)]
    if len(starts) < 2:
        raise ConfigError("a filler passage has no sentence boundaries to cut at; use a longer length")
    raw = raw[starts[0]:]  # the passage begins mid-sentence: drop that part
    enc = tokenizer(raw, add_special_tokens=False, return_offsets_mapping=True)
    token_starts = [a for a, _ in enc["offset_mapping"]]
    bounds = [m.end() for m in _BOUNDARY.finditer(raw)]
    fits = [b for b in bounds if sum(1 for s in token_starts if s < b) <= room]
    end = fits[-1] if fits else len(raw)
    filler = raw[:end].rstrip()
    return filler, [0] + [b for b in bounds if b < len(filler)]


def retrieval_cases(tokenizer, task: str, cases: int, *, length: int = DEFAULT_LENGTH, split: str = "report",
                    seed: int = 0, text: str | None = None, keys: int = MULTIKEY_KEYS,
                    hops: int = VARTRACK_HOPS) -> list[RetrievalCase]:
    """``cases`` independent documents of about ``length`` tokens for ``task``.

    Case ``i`` draws its needle wording, question wording, numbers and depths from
    ``Random((seed, task, i))``, so a case is the same whatever ``cases`` is.
    """
    _check([task], [])
    if cases < 1:
        raise ConfigError(f"cases must be >= 1, got {cases}")
    if task == "multikey" and not 2 <= keys <= len(COLOURS):
        raise ConfigError(f"multikey needs 2..{len(COLOURS)} keys, got {keys}")
    if task == "vartrack" and hops < 1:
        raise ConfigError(f"vartrack needs at least 1 hop, got {hops}")
    count = lambda s: len(tokenizer(s, add_special_tokens=False).input_ids)  # noqa: E731
    out = []
    for i, (key, ids) in enumerate(_fillers(tokenizer, cases, length, split, text)):
        rng = random.Random(f"{seed}/{task}/{i}")
        needles, question, expected = _needles(task, rng, keys, hops)
        tail = "\n\n" + question
        room = length - count(INTRO[task]) - sum(count(" " + n) for n in needles) - count(tail)
        if room < MIN_FILLER:
            raise ConfigError(f"length {length} leaves {room} filler tokens for a {task} document; "
                              f"need at least {MIN_FILLER}")
        filler, bounds = _cut(tokenizer, ids, room)
        # distinct boundaries at random depths, in document order (a vartrack chain reads forwards)
        spots = sorted(rng.sample(range(len(bounds)), len(needles))) if len(bounds) >= len(needles) else None
        if spots is None:
            raise ConfigError(f"a {task} filler has {len(bounds)} sentence boundaries for {len(needles)} needles")
        parts, offsets, last = [INTRO[task]], [], 0
        pos = len(INTRO[task])
        for spot, needle in zip(spots, needles):
            b = bounds[spot]
            parts.append(filler[last:b])
            pos += b - last
            head = filler[:b]
            sep = head[len(head.rstrip()):] if b else "\n\n"  # the break that precedes the boundary
            offsets.append(pos)
            parts.append(needle + sep)
            pos += len(needle) + len(sep)
            last = b
        parts += [filler[last:], tail]
        prompt = "".join(parts)
        depths = tuple(round(bounds[s] / max(1, len(filler)), 3) for s in spots)
        out.append(RetrievalCase(task, i, key, prompt, tuple(needles), tuple(offsets), depths, question,
                                 expected, filler))
    return out


_NAMED = re.compile(r"VAR ([A-Z]{3})$")
CHAIN_TEXT = " ="  # appended when a vartrack answer names a variable and would end there
CHAIN_TOKENS = 6  # answer tokens added per vartrack hop: " VAR ABC =" before the number


class ChainLookup(LogitsProcessor):
    """Greedy vartrack answers that follow a chain of assignments, one row each.

    An answer that names a variable (``VAR ABC``) and would end there is continued with
    `` =``, at most ``hops`` times, and after the last one the next token may not name another
    variable: a small model follows one assignment per lookup but neither resolves a copy
    silently nor leaves a repeated ``VAR ABC = VAR ABC`` loop by itself. Which variable is
    named and which number follows are the model's own (greedy) choices. ``input_ids`` must
    be the tokens generated so far (no context).
    """

    def __init__(self, tokenizer, rows: int, hops: int) -> None:
        self.tok, self.hops = tokenizer, hops
        self.ban = tokenizer(" VAR", add_special_tokens=False).input_ids[0]
        self.chain = tokenizer(CHAIN_TEXT, add_special_tokens=False).input_ids
        self.queue: list[list[int]] = [[] for _ in range(rows)]
        self.chained = [0] * rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        for r, out in enumerate(input_ids.tolist()):
            if self.chained[r] == self.hops and not self.queue[r] and out[-len(self.chain):] == self.chain:
                scores[r, self.ban] = float("-inf")  # the last chain step is answered with a value, not a name
            nxt = int(scores[r].argmax())
            if not self.queue[r] and self.chained[r] < self.hops and _NAMED.search(self.tok.decode(out)) \
                    and not self.tok.decode([nxt])[:1].isalnum():
                self.queue[r] = list(self.chain)
                self.chained[r] += 1
            if self.queue[r]:  # force the queued token
                forced = self.queue[r].pop(0)
                scores[r] = float("-inf")
                scores[r, forced] = 0.0
        return scores


def _answer(llm, cache, n: int, first_logits: torch.Tensor, hops: int = 0) -> list[str]:
    """Greedy answers, one per row, after a prefilled cache (the session stays attached by the
    caller); with ``hops`` (vartrack) the answers follow assignments (``ChainLookup``)."""
    chain = LogitsProcessorList([ChainLookup(llm.tokenizer, first_logits.shape[0], hops)]) if hops else None
    out = greedy(llm.model, cache, n, first_logits, processors=chain)
    return [llm.tokenizer.decode(o, skip_special_tokens=True).strip() for o in out.tolist()]


@torch.no_grad()
def retrieval(llm, *, tasks: Sequence[str] = TASKS, cases: int = 8, budget_fractions: Sequence[float] = (0.25, 0.125),
              policies: Sequence = DEFAULT_POLICIES, split: str = "report", length: int = DEFAULT_LENGTH,
              granularity: str = "auto", seed: int = 0, config: MemoryConfig | None = None, text: str | None = None,
              answer_tokens: int = 8, keys: int = MULTIKEY_KEYS, hops: int = VARTRACK_HOPS,
              progress: bool = True) -> list[dict]:
    """Retrieval accuracy per task, policy and budget fraction over ``cases`` independent documents.

    Each document is read in one pass with the full cache and compressed after it
    (question-aware); every policy compresses a copy of the same prefill. A fraction ``f``
    keeps ``f`` of the document plus the question and answer prefix
    (:func:`~memollm.evaluate.passkey.passkey_budget`). ``policies``: names or
    ``(label, name, MemoryConfig)`` variants; ``full`` is always added. One record per
    (task, policy, fraction, case); a case is correct if the expected number is in the answer.
    """
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    _check(tasks, budget_fractions)
    specs = [spec(p) for p in policies if spec(p)[1] != "full"]
    base = (config or llm.config).replace(granularity=granularity)
    gran = base.granularity_for("evict")
    docs = {t: retrieval_cases(llm.tokenizer, t, cases, length=length, split=split, seed=seed, text=text,
                               keys=keys, hops=hops) for t in tasks}
    enc = lambda s: llm.tokenizer(s, add_special_tokens=False).input_ids  # noqa: E731
    records: list[dict] = []
    bar = tqdm(total=sum(len(d) for d in docs.values()), desc="retrieval", leave=False, disable=not progress)
    for task in tasks:
        for doc in docs[task]:
            ids = torch.tensor([enc(doc.prompt)], device=llm.device)
            total, q_tokens = ids.shape[1], len(enc("\n\n" + doc.question))
            capture = PrefillCapture(llm.model, specs, base)
            cache = DynamicCache(config=llm.model.config)
            with attached(llm.model, capture):
                first = llm.model(ids, cache=cache, use_cache=True).logits[:, -1]
            prefilled = [(layer.keys, layer.values) for layer in cache.layers]

            def record(policy, budget, fraction, g, answer, full_ok=None) -> dict:
                ok = int(doc.expected in answer)
                return {"evaluation": "retrieval", "task": task, "policy": policy, "granularity": g,
                        "budget": budget, "budget_fraction": fraction, "document": doc.document, "case": doc.case,
                        "split": split, "tokens": total, "expected": doc.expected,
                        "answer": answer, "correct": ok, "full_correct": ok if full_ok is None else full_ok,
                        "read": "whole", "depths": list(doc.depths)}

            chain = task == "vartrack"
            n_answer = answer_tokens + (CHAIN_TOKENS * hops if chain else 0)
            answer = _answer(llm, copy_prefill(llm.model, prefilled, 1), n_answer, first, hops if chain else 0)[0]
            full = record("full", None, None, None, answer)
            records.append(full)
            for f in budget_fractions:
                budget = passkey_budget(total, float(f), q_tokens)
                cfg = eval_config(llm, budget, config=base)
                cfg.check_budget(budget)
                if specs:
                    session, cache_p = rows_from_prefill(llm.model, specs, cfg, prefilled, capture, seed=seed)
                    with attached(llm.model, session):
                        answers = _answer(llm, cache_p, n_answer, first.repeat(len(specs), 1), hops if chain else 0)
                    for (label, _, _), a in zip(specs, answers):
                        records.append(record(label, budget, float(f), gran, a, full["correct"]))
            bar.update(1)
    bar.close()
    return records



def retrieval_summary(records: list[dict]) -> list[dict]:
    """Per (task, budget fraction, policy): ``documents``, ``full_answered`` (documents the full
    cache answered), ``accuracy_full_answered`` (accuracy on those: what eviction lost) and
    ``accuracy`` over every document. The unit is the document; ``full`` has fraction None."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["task"], r["budget_fraction"], r["policy"]), []).append(r)
    out = []
    for (task, fraction, policy), rs in groups.items():
        answered = [r for r in rs if r["full_correct"]]
        out.append({"task": task, "budget_fraction": fraction, "policy": policy, "documents": len(rs),
                    "full_answered": len(answered),
                    "accuracy_full_answered": sum(r["correct"] for r in answered) / len(answered) if answered
                    else None,
                    "accuracy": sum(r["correct"] for r in rs) / len(rs)})
    return out
