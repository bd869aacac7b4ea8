"""Reference implementations the equivalence tests compare memollm against, and helpers and texts
several test modules share.

Each reference is written without memollm's session or attention function: a plain greedy loop
over the model's forward with an explicit ``DynamicCache`` and true ``position_ids``.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from memollm.attention import is_attached

# A conversation (test_chat.py, test_views.py, test_cli.py): short turns, and a message longer than a small budget.
TURNS = ["Hello! My name is Ada and I live in Lisbon.", "What is the capital of France?",
         "Tell me a short fact about cats.", "What is my name?"]
LONG = ("Here is a long message so that one turn alone does not fit in the budget: " +
        "the quick brown fox jumps over the lazy dog, " * 6).strip()


def greedy_reference(model, ids: torch.Tensor, n: int, *, drop: dict[int, list[int]] | None = None,
                     hide: dict[int, list[int]] | None = None, eos: int | None = None,
                     return_logits: bool = False):
    """Greedy decode ``n`` tokens from ``ids`` ``[1, P]``: the tests' own reference, written apart
    from ``memollm.lessons.decode_loop`` (the lessons' loop) on purpose, so a bug in the library
    cannot make both sides of an equivalence agree.

    ``drop`` {step: positions}: before decode step ``step`` (the prefill is step 0), those
    positions are physically removed from every full-attention cache layer (``index_select``;
    sliding-window layers keep their own window).
    ``hide`` {step: positions}: from step ``step`` on, those positions stay in the cache
    but are hidden with a 2D attention mask (0 = masked); on a model with sliding-window layers
    the mask goes to the full-attention layers only (Gemma 3 takes a mask per layer type).
    Stops after ``eos`` like ``model.generate`` does for a batch of one.
    """
    drop, hide = drop or {}, hide or {}
    prompt_len = ids.shape[1]
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        out = model(input_ids=ids, cache=cache, use_cache=True,
                    position_ids=torch.arange(prompt_len)[None])
        slots = list(range(prompt_len))  # true position held by each physical cache slot
        hidden: set[int] = set()
        tokens, logits = [], [out.logits[0, -1].clone()]
        nxt = int(out.logits[0, -1].argmax())
        tokens.append(nxt)
        for step in range(1, n):
            if eos is not None and nxt == eos:
                break
            if step in drop:
                gone = set(drop[step])
                assert gone <= set(slots), f"step {step}: dropping positions not in the cache"
                keep = torch.tensor([i for i, p in enumerate(slots) if p not in gone])
                for layer in cache.layers:
                    if getattr(layer, "is_sliding", False):
                        continue
                    layer.keys = layer.keys.index_select(-2, keep)
                    layer.values = layer.values.index_select(-2, keep)
                slots = [slots[i] for i in keep.tolist()]
            hidden |= set(hide.get(step, []))
            pos = prompt_len + step - 1
            kwargs = {}
            if hide:
                mask = torch.ones(1, len(slots) + 1, dtype=torch.long)
                for i, p in enumerate(slots):
                    if p in hidden:
                        mask[0, i] = 0
                kwargs["attention_mask"] = mask
                if any(getattr(layer, "is_sliding", False) for layer in cache.layers):
                    # one query sees the whole sliding window, so only the full layers need a mask
                    kwargs["attention_mask"] = {"full_attention": mask.bool()[:, None, None, :],
                                                "sliding_attention": None}
            out = model(input_ids=torch.tensor([[nxt]]), cache=cache, use_cache=True,
                        position_ids=torch.tensor([[pos]]), **kwargs)
            slots.append(pos)
            logits.append(out.logits[0, -1].clone())
            nxt = int(out.logits[0, -1].argmax())
            tokens.append(nxt)
    if return_logits:
        return tokens, torch.stack(logits)
    return tokens


def assert_clean(model) -> None:
    """Nothing memollm registers is left on ``model``."""
    assert not is_attached(model)
    assert model.config._attn_implementation == "sdpa"
    for m in model.modules():
        assert not hasattr(m, "_memollm_session")
        assert not m._forward_hooks, f"forward hooks left on {type(m).__name__}"
        assert not m._forward_pre_hooks, f"forward pre-hooks left on {type(m).__name__}"


def forced_forgetting(**changes):
    """A config under which retention falls below the sparse threshold within a few tokens
    (R = exp(-t/S) with S = 0.5 and 0.5 age per token: below 1e-3 after ~7 tokens)."""
    from memollm import MemoryConfig

    base = dict(initial_strength=0.5, time_step=0.5, review="none")
    base.update(changes)
    return MemoryConfig(**base)


def one_thread():
    """Run a test module on one torch thread. On this shared 2-core machine two OpenMP
    threads per process oversubscribe the CPU and run 4-15x slower than one (measured)."""
    import pytest

    @pytest.fixture(autouse=True, scope="module")
    def _one_thread():
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(before)

    return _one_thread


def per_layer_masked_reference(model, ids: torch.Tensor, tokens: list[int], events: dict, layer_ids) -> list[int]:
    """Teacher-forced greedy decoding of ``tokens`` with the full cache, hiding in each layer the
    positions that layer evicted (or masked), from the step it did so on: ``events`` is
    ``{step: {"layer_<i>": [positions]}}`` as in a per-layer result. An independent reference:
    masks through a registered attention function, no gathers. Returns the argmax of every step."""
    hidden: dict[int, set[int]] = {l: set() for l in layer_ids}

    def masked_attention(module, q, k, v, mask, **kw):
        gone = hidden.get(module.layer_idx)
        if gone and q.shape[-2] == 1:
            allow = torch.ones(k.shape[-2], dtype=torch.bool)
            allow[sorted(gone)] = False
            mask = allow[None, None, None, :] if mask is None else mask & allow[None, None, None, :]
        return sdpa_attention_forward(module, q, k, v, mask, **kw)

    AttentionInterface.register("test_per_layer_mask", masked_attention)
    AttentionMaskInterface.register("test_per_layer_mask", sdpa_mask)
    previous = model.config._attn_implementation
    model.set_attn_implementation("test_per_layer_mask")
    try:
        cache = DynamicCache(config=model.config)
        out = model(ids, cache=cache, use_cache=True)
        argmax = [int(out.logits[0, -1].argmax())]
        for step in range(1, len(tokens)):
            for name, gone in events.get(step, {}).items():
                hidden[int(name.split("_")[1])].update(gone)
            out = model(torch.tensor([[tokens[step - 1]]]), cache=cache, use_cache=True)
            argmax.append(int(out.logits[0, -1].argmax()))
        return argmax
    finally:
        model.set_attn_implementation(previous)


def random_gate(model, seed: int = 0):
    """A random strength gate shaped for ``model``: log S spread over a few orders of magnitude."""
    import json

    from memollm.strength import StrengthGate, model_signature

    cfg = model.config
    gate = StrengthGate(list(range(cfg.num_hidden_layers)), cfg.hidden_size, cfg.num_key_value_heads,
                        init_log_strength=2.0, metadata={"signature": json.dumps(model_signature(model)),
                                                         "model": "tiny", "seed": str(seed)})
    with torch.no_grad():
        gate.weight.copy_(torch.randn(gate.weight.shape, generator=torch.Generator().manual_seed(seed)))
    return gate
