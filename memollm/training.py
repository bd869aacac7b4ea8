"""Training a ``StrengthGate``: which tokens will later queries still read?

One frozen forward pass per passage (eager attention, so the weights exist) gives, per layer,
each token's attention input and every query's attention per KV head. A target asks whether
token ``i`` is still *needed* at age ``a``: whether it is among the fewest keys that hold half
of query ``i + a``'s attention mass (the 4 sink tokens, which every query reads, left out).
The gate is then fitted so that retention ``p = exp(-a / S)`` predicts that (binary
cross-entropy): a token needed late gets a large ``S``, one needed only briefly a small one.
Ages come from three buckets (8-16, 32-64, 128-256 tokens) so the fit sees short and long
memories alike. Training reads only the ``tune`` half of each text; evaluation
(``memollm eval capture``) reads the ``report`` half.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from .cache import full_attention_layers
from .models import DEFAULT_MODEL, ModelNotAvailableError
from .memory import top_p_keys
from .strength import StrengthGate, model_signature
from .texts import passages

AGES = ((8, 16), (32, 64), (128, 256))
"""Age buckets in tokens: a target's age is drawn uniformly from each, inclusive."""
SINKS = 4
"""The first tokens every query reads (attention sinks): never a target, never evicted."""
SOURCES = ("docs", "prose")


# -- one eager pass ---------------------------------------------------------------------------
def _decoder_layers(model: torch.nn.Module):
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not all(hasattr(m, "input_layernorm") and hasattr(m, "self_attn") for m in layers):
        raise ModelNotAvailableError(f"{type(model).__name__}: gates read model.model.layers[i].input_layernorm "
                                     "and .self_attn (Llama-style decoders); this model has no such layers")
    return layers


@contextlib.contextmanager
def _eager(model: torch.nn.Module) -> Iterator[None]:
    """Eager attention for the pass (sdpa returns no weights), the previous kind restored after."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


@torch.no_grad()
def eager_pass(model: torch.nn.Module, ids: torch.Tensor, layers: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hidden [layers, T, hidden], attention [layers, kv_heads, T, T])`` of one full-cache pass over ``ids`` ``[T]``.

    The attention of each KV head is the mean of its query heads (query head ``h`` reads KV head
    ``h // group``). Hooks reduce each layer's weights as the layer runs, so only the per-KV-head
    maps are held (not ``output_attentions``' per-query-head maps of every layer at once).
    """
    blocks = _decoder_layers(model)
    kv = model_signature(model)["num_key_value_heads"]
    hidden: dict[int, torch.Tensor] = {}
    attn: dict[int, torch.Tensor] = {}

    def keep_hidden(i):
        return lambda _m, _inp, out: hidden.__setitem__(i, out[0].float())

    def keep_attn(i):
        def hook(_m, _inp, out):
            w = out[1] if isinstance(out, tuple) and len(out) > 1 else None
            if w is None:
                raise RuntimeError(f"layer {i} returned no attention weights under eager attention")
            heads, t = w.shape[1], w.shape[-1]
            attn[i] = w[0].float().view(kv, heads // kv, t, t).mean(1)
        return hook

    handles = []
    try:
        for i in layers:
            handles.append(blocks[i].input_layernorm.register_forward_hook(keep_hidden(i)))
            handles.append(blocks[i].self_attn.register_forward_hook(keep_attn(i)))
        with _eager(model):
            model(ids[None].to(next(model.parameters()).device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([hidden[i].cpu() for i in layers]), torch.stack([attn[i].cpu() for i in layers])


def top_half(attn: torch.Tensor, sinks: int = SINKS) -> torch.Tensor:
    """Bool ``[..., T, T]``: key ``k`` is among the fewest non-sink keys holding half of query ``t``'s
    non-sink attention mass (ties broken by the sort): the top-p review rule at p = 0.5."""
    return top_p_keys(attn, 0.5, sinks)


# -- data -------------------------------------------------------------------------------------
@dataclass
class StrengthData:
    """What ``fit`` reads: attention inputs per layer and the targets drawn from them.

    ``hidden``: ``[layers, N, hidden]`` for the N tokens of all passages; ``token``, ``age``,
    ``head``, ``y``: ``[layers, S]`` targets (token index into N, age in tokens, KV head, 0/1).
    """

    layers: list[int]
    hidden: torch.Tensor
    token: torch.Tensor
    age: torch.Tensor
    head: torch.Tensor
    y: torch.Tensor
    kv_heads: int
    ages: tuple[tuple[int, int], ...]
    samples: int


def passage_list(tokenizer, count: int, tokens: int, split: str, sources: Sequence[str] = SOURCES) -> list:
    """``count`` passages alternating between ``sources`` (docs 0, prose 0, docs 1, ...)."""
    per = math.ceil(count / len(sources))
    by_source = passages(tokenizer, tokens, per, sources=sources, split=split)
    return [by_source[s * per + i] for i in range(per) for s in range(len(sources))][:count]


def collect(llm, ids_list: Sequence[torch.Tensor], *, ages: Sequence[tuple[int, int]] = AGES, samples: int = 512,
            seed: int = 0, progress: bool = True) -> StrengthData:
    """One frozen eager pass per passage: attention inputs and ``samples`` targets per passage,
    layer and age bucket (token, age, KV head drawn with a generator seeded by ``seed``)."""
    model = llm.model
    layers = full_attention_layers(model)
    gen = torch.Generator().manual_seed(seed)
    hidden, cols = [], {k: [] for k in ("token", "age", "head", "y")}
    offset = 0
    for ids in tqdm(ids_list, desc="collect", leave=False, disable=not progress):
        h, attn = eager_pass(model, ids, layers)
        t_len, kv = h.shape[1], attn.shape[1]
        member = top_half(attn)  # [L, K, T, T]
        hidden.append(h)
        got = {k: [] for k in cols}
        for lo, hi in ages:
            if t_len <= SINKS + lo:
                raise ValueError(f"passages of {t_len} tokens are too short for ages {lo}-{hi}")
            shape = (len(layers), samples)
            age = torch.randint(lo, min(hi, t_len - 1 - SINKS) + 1, shape, generator=gen)
            token = SINKS + (torch.rand(shape, generator=gen) * (t_len - SINKS - age)).long()
            head = torch.randint(0, kv, shape, generator=gen)
            layer = torch.arange(len(layers))[:, None].expand(shape)
            got["y"].append(member[layer, head, token + age, token].float())
            got["token"].append(token + offset)
            got["age"].append(age.float())
            got["head"].append(head)
        for k in cols:
            cols[k].append(torch.cat(got[k], 1))
        offset += t_len
    return StrengthData(layers, torch.cat(hidden, 1), *(torch.cat(cols[k], 1) for k in ("token", "age", "head", "y")),
                        kv_heads=kv, ages=tuple(tuple(a) for a in ages), samples=samples)


# -- fitting ----------------------------------------------------------------------------------
def bce(gate: StrengthGate, data: StrengthData) -> torch.Tensor:
    """Mean binary cross-entropy of ``p = exp(-age / S)`` against the targets, over every layer."""
    log_s = gate.log_strength_all(data.hidden)  # [L, N, K]
    picked = log_s[torch.arange(len(data.layers))[:, None], data.token, data.head]
    p = torch.exp(-data.age * torch.exp(-picked)).clamp(1e-6, 1 - 1e-6)
    return torch.nn.functional.binary_cross_entropy(p, data.y)


def fit(data: StrengthData, *, steps: int = 300, lr: float = 0.02, seed: int = 0,
        progress: bool = False) -> StrengthGate:
    """Full-batch Adam on :func:`bce`, from a gate that gives every token ``S = e**4``.

    Deterministic: no sampling after ``collect`` and one thread for the duration, so the same
    data and seed give bitwise the same weights.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        gate = StrengthGate(data.layers, data.hidden.shape[-1], data.kv_heads)
        opt = torch.optim.Adam(gate.parameters(), lr=lr)
        bar = tqdm(range(steps), desc="fit", leave=False, disable=not progress)
        for _ in bar:
            opt.zero_grad()
            loss = bce(gate, data)
            loss.backward()
            opt.step()
            bar.set_postfix(bce=f"{loss.item():.4f}", refresh=False)
    finally:
        torch.set_num_threads(threads)
    return gate.eval()


def command_line(llm, *, passages: int, tokens: int, steps: int, seed: int) -> str:
    """The ``memollm train-strength`` call that reproduces a run (``--model`` left out for the bundled model)."""
    model = "" if llm.model_name == DEFAULT_MODEL else f" --model {llm.model_name}"
    return f"memollm train-strength{model} --passages {passages} --tokens {tokens} --steps {steps} --seed {seed}"


def _version() -> str:
    """The installed memollm's version (read from its metadata: the package root sits above this module)."""
    try:
        return importlib.metadata.version("memollm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def train_strength(llm, *, passages: int = 24, tokens: int = 512, steps: int = 300, seed: int = 0,
                   split: str = "tune", samples: int = 512, lr: float = 0.02, progress: bool = True) -> StrengthGate:
    """Collect targets on ``passages`` passages of ``tokens`` tokens of the ``tune`` split and fit a gate.

    The gate's metadata records what reproduces it: model and its signature, data, settings,
    seed, memollm's version and the equivalent command line (no times or paths, so that the
    same run writes the same bytes).
    """
    if split == "report":
        raise ValueError("never fit on the report split: it is held out for evaluation (use split='tune')")
    texts = passage_list(llm.tokenizer, passages, tokens, split)
    start = time.perf_counter()
    data = collect(llm, [p.ids for p in texts], samples=samples, seed=seed, progress=progress)
    collected = time.perf_counter()
    gate = fit(data, steps=steps, lr=lr, seed=seed, progress=progress)
    gate.metadata.update(
        model=str(llm.model_name), signature=json.dumps(model_signature(llm.model), sort_keys=True), split=split,
        sources=",".join(SOURCES), passages=str(passages), tokens=str(tokens), ages=json.dumps(list(data.ages)),
        samples=str(samples), steps=str(steps), lr=str(lr), seed=str(seed), memollm_version=_version(),
        command=command_line(llm, passages=passages, tokens=tokens, steps=steps, seed=seed),
        bce_initial=f"{bce(StrengthGate(data.layers, gate.hidden_size, gate.kv_heads), data).item():.5f}",
        bce_final=f"{bce(gate, data).item():.5f}")
    gate.timing = {"collect_s": collected - start, "fit_s": time.perf_counter() - collected}  # not saved
    return gate


__all__ = ["AGES", "SINKS", "StrengthData", "bce", "collect", "command_line", "eager_pass", "fit", "passage_list",
           "top_half", "train_strength"]
