"""Faults, non-finite scores, concurrent and re-entrant use, long runs and safe loading never
corrupt the model or give silently wrong output."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import threading

import psutil
import pytest
import torch
from transformers import AutoModelForCausalLM, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

import memollm.session
from conftest import tiny_config
from memollm import EbbinghausLLM, MemoryConfig, ModelNotAvailableError, load_model, register_policy
from memollm.config import SEED_RULE
from memollm.attention import attention_modules
from memollm.policies import POLICIES, StreamingPolicy
from memollm.config import knobs_for
from memollm_testutils import assert_clean, forced_forgetting, one_thread

_one_thread = one_thread()

PROMPT = "The quick brown fox jumps over the lazy dog. The dog sleeps while the fox runs."
MEMORY_MODES = ("soft_delete", "sparse_attention", "evict")
EVICT = dict(memory_budget=16, sink_tokens=2, recent_window=4)
FOX_CAT = "The quick brown fox jumps over the lazy dog while the cat sleeps."
EVICT_TINY = dict(chat=False, memory_budget=24, sink_tokens=2, recent_window=4, ignore_eos=True)


def _fresh_model(tokenizer, arch="llama"):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer)), attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def subject(tokenizer):
    """A tiny model this module may break, and the outputs of an identical fresh model."""
    llm = EbbinghausLLM(model=_fresh_model(tokenizer), tokenizer=tokenizer)
    fresh = EbbinghausLLM(model=_fresh_model(tokenizer), tokenizer=tokenizer)
    expected = {mode: fresh.generate(PROMPT, 12, mode, chat=False, **knobs_for(mode, EVICT))["token_ids"] for mode in
                ("baseline", "soft_delete", "sparse_attention", "evict")}
    weights = {k: v.clone() for k, v in llm.model.state_dict().items()}
    return llm, expected, weights


def _assert_unchanged(llm, expected, weights, modes=("baseline",)):
    assert_clean(llm.model)
    for k, v in llm.model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    for mode in modes:
        assert llm.generate(PROMPT, 12, mode, chat=False, **knobs_for(mode, EVICT))["token_ids"] == expected[mode], mode


# -- faults --------------------------------------------------------------------------------
class RaiseAt(StoppingCriteria):
    def __init__(self, step: int, exc: BaseException):
        self.step, self.exc, self.calls = step, exc, 0

    def __call__(self, input_ids, scores, **kwargs):
        self.calls += 1
        if self.calls == self.step:
            raise self.exc
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


class BrokenStreamer(BaseStreamer):
    def __init__(self, step: int):
        self.step, self.calls = step, 0

    def put(self, value):
        self.calls += 1
        if self.calls == self.step:
            raise OSError("the notebook output went away")

    def end(self):
        pass


@pytest.mark.parametrize("mode", ("baseline",) + MEMORY_MODES)
@pytest.mark.parametrize("fault", ["exception", "keyboard-interrupt", "streamer"])
def test_a_fault_mid_generation_leaves_the_model_unchanged(subject, mode, fault):
    llm, expected, weights = subject
    kwargs = dict(chat=False, **knobs_for(mode, EVICT))
    if fault == "exception":
        kwargs["stopping_criteria"] = StoppingCriteriaList([RaiseAt(4, RuntimeError("boom"))])
        error = RuntimeError
    elif fault == "keyboard-interrupt":
        kwargs["stopping_criteria"] = StoppingCriteriaList([RaiseAt(4, KeyboardInterrupt())])
        error = KeyboardInterrupt
    else:
        kwargs["streamer"] = BrokenStreamer(4)
        error = OSError
    with pytest.raises(error):
        llm.generate(PROMPT, 12, mode, config=forced_forgetting(), **kwargs)
    _assert_unchanged(llm, expected, weights, modes=("baseline", mode))


def test_a_fault_inside_the_attention_function_is_cleaned_up(subject, monkeypatch):
    llm, expected, weights = subject
    calls = {"n": 0}
    real = memollm.session.received_attention

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(memollm.session, "received_attention", flaky)
    with pytest.raises(KeyboardInterrupt):
        llm.generate(PROMPT, 12, "evict", chat=False, **EVICT)
    monkeypatch.undo()
    _assert_unchanged(llm, expected, weights, modes=("baseline", "evict"))


def test_an_unsupported_model_is_left_unchanged(tokenizer):
    import transformers as tf

    torch.manual_seed(0)
    # every layer a sliding window: no full-attention layer to keep memory on (Gemma 3 has some, and works)
    cfg = tf.MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, sliding_window=8)
    llm = EbbinghausLLM(model=tf.MistralForCausalLM(cfg).eval(), tokenizer=tokenizer)
    before = llm.generate(PROMPT, 5, chat=False)["token_ids"]
    for mode in ("soft_delete", "sparse_attention", "evict"):
        with pytest.raises(NotImplementedError):
            llm.generate(PROMPT, 5, mode, chat=False)
        assert_clean(llm.model)
    assert llm.generate(PROMPT, 5, chat=False)["token_ids"] == before


def test_bad_input_is_rejected_before_any_forward(subject):
    llm = subject[0]
    calls = []
    handle = llm.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        for kwargs in (dict(max_new_tokens=2000), dict(generation_mode="evict", memory_budget=3),
                       dict(temperature=-1.0), dict(policy="nope", generation_mode="evict")):
            with pytest.raises(ValueError):
                llm.generate(PROMPT, **{"max_new_tokens": 4, **kwargs}, chat=False)
    finally:
        handle.remove()
    assert calls == []
    assert_clean(llm.model)


# -- non-finite scores ---------------------------------------------------------------------
@pytest.fixture
def nan_policy():
    @register_policy("test_nan_scores")
    class NaNScores(StreamingPolicy):
        def scores(self, positions):
            s = positions.float()
            s[..., 5] = float("nan")  # one overflowed score poisons a ranking
            return s

    yield "test_nan_scores"
    POLICIES.pop("test_nan_scores", None)


def test_nan_scores_fall_back_to_recency_and_say_so(subject, nan_policy):
    llm = subject[0]
    r = llm.generate(PROMPT, 12, "evict", chat=False, policy=nan_policy, **EVICT)
    assert any("non-finite eviction scores" in w for w in r["warnings"])
    streaming = llm.generate(PROMPT, 12, "evict", chat=False, policy="streaming", **EVICT)
    assert streaming["warnings"] == []
    assert r["token_ids"] == streaming["token_ids"]  # recency is exactly StreamingLLM's choice
    assert r["evict_events"] == streaming["evict_events"]
    assert r["kv_cache_tokens"] == 16


def test_non_finite_attention_skips_reinforcement_and_says_so(subject, monkeypatch):
    llm = subject[0]
    real = memollm.session.received_attention

    def overflow(*args, **kwargs):
        out = real(*args, **kwargs)
        return torch.full_like(out, float("nan"))

    monkeypatch.setattr(memollm.session, "received_attention", overflow)
    seed = MemoryConfig(**SEED_RULE)  # the seed's rule: attention acts only through reinforcement
    r = llm.generate(PROMPT, 12, "evict", chat=False, return_attention_weights=True, config=seed, **EVICT)
    monkeypatch.undo()
    assert any("non-finite attention" in w for w in r["warnings"])
    assert all(x == x for x in r["token_weights"]["retention"]["layer_0"])  # no NaN reached the state
    no_reinforcement = llm.generate(PROMPT, 12, "evict", chat=False, config=seed.replace(review="none"),
                                    **EVICT)
    assert r["token_ids"] == no_reinforcement["token_ids"]
    assert r["evict_events"] == no_reinforcement["evict_events"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_every_mode(tokenizer, dtype):
    llm = EbbinghausLLM(model=_fresh_model(tokenizer).to(dtype), tokenizer=tokenizer)
    base = llm.generate(PROMPT, 10, chat=False)["token_ids"]
    same = [llm.generate(PROMPT, 10, "soft_delete", chat=False, config=forced_forgetting(soft_delete_floor=1.0)),
            llm.generate(PROMPT, 10, "evict", chat=False, memory_budget=100)]
    assert all(r["token_ids"] == base for r in same)
    for mode, kw in [("soft_delete", {"config": forced_forgetting(soft_delete_floor=0.0)}),
                     ("soft_delete", {"config": forced_forgetting(soft_delete_floor=0.0, soft_delete_target="logits")}),
                     ("sparse_attention", {"config": forced_forgetting()}), ("evict", EVICT)]:
        r = llm.generate(PROMPT, 10, mode, chat=False, return_attention_weights=True, **kw)
        assert r["num_tokens"] == 10 and r["warnings"] == []
        assert all(0.0 <= x <= 1.0 for x in r["token_weights"]["retention"]["layer_0"])
    assert_clean(llm.model)


def test_warnings_do_not_leak_into_the_next_call(subject, nan_policy):
    llm = subject[0]
    assert llm.generate(PROMPT, 6, "evict", chat=False, policy=nan_policy, **EVICT)["warnings"]
    assert llm.generate(PROMPT, 6, "evict", chat=False, **EVICT)["warnings"] == []


# -- concurrency ---------------------------------------------------------------------------
JOBS = [("baseline", {}), ("evict", EVICT), ("sparse_attention", {"config": forced_forgetting()}),
        ("soft_delete", {"config": forced_forgetting(soft_delete_floor=0.0)})]


def _run_threads(llms, n=16):
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(JOBS))

    def work(i):
        mode, kw = JOBS[i]
        try:
            barrier.wait()
            results[i] = llms[i % len(llms)].generate(PROMPT, n, mode, chat=False, **kw)["token_ids"]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(JOBS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return results


def test_threads_sharing_one_llm_get_the_sequential_outputs(subject):
    llm = subject[0]
    sequential = {i: llm.generate(PROMPT, 16, m, chat=False, **kw)["token_ids"] for i, (m, kw) in enumerate(JOBS)}
    assert _run_threads([llm]) == sequential
    assert_clean(llm.model)


def test_two_wrappers_of_one_model_are_serialised_too(subject):
    """Two EbbinghausLLM objects around the same model (a notebook that wrapped it twice)
    share one lock: a session changes the model itself, not the wrapper."""
    llm = subject[0]
    other = EbbinghausLLM(model=llm.model, tokenizer=llm.tokenizer)
    sequential = {i: llm.generate(PROMPT, 16, m, chat=False, **kw)["token_ids"] for i, (m, kw) in enumerate(JOBS)}
    assert _run_threads([llm, other]) == sequential
    assert_clean(llm.model)


# -- re-entrant use ----------------------------------------------------------------------------
def test_generate_inside_a_running_generation_fails_clearly(tiny):
    class Reenter:
        def put(self, value):
            tiny.generate("Hi.", 2, chat=False)

        def end(self):
            pass

    for mode in ("baseline", "evict"):
        kwargs = EVICT_TINY if mode == "evict" else dict(chat=False)
        if mode == "baseline":
            tiny.generate(FOX_CAT, 2, streamer=Reenter(), **kwargs)  # no session attached: harmless, allowed
            continue
        with pytest.raises(RuntimeError, match="inside a running generation"):
            tiny.generate(FOX_CAT, 2, mode, streamer=Reenter(), **kwargs)
        assert_clean(tiny.model)


# -- long runs -----------------------------------------------------------------------------
@pytest.mark.parametrize("granularity", ["shared", "layer"])
def test_evict_memory_stays_flat_over_a_long_run(subject, granularity):
    llm = subject[0]
    budget, n = 64, 300
    cfg = MemoryConfig(memory_budget=budget, sink_tokens=4, recent_window=16, granularity=granularity)
    seen = []
    rss = []
    attn = attention_modules(llm.model)[0]
    proc = psutil.Process()

    def probe(module, args, kwargs):
        session = getattr(attn, "_memollm_session", None)
        cache = kwargs["cache"]
        seen.append((int(cache.get_seq_length()), session.memory.nbytes, session.positions.numel(),
                     session.policy.memory.num_tokens))
        if len(seen) in (100, n - 1):
            rss.append(proc.memory_info().rss)

    # registered first, so it sees the cache before the session's own pre-hook evicts
    handle = llm.model.register_forward_pre_hook(probe, with_kwargs=True)
    try:
        r = llm.generate(PROMPT, n, "evict", chat=False, config=cfg, ignore_eos=True)
    finally:
        handle.remove()
    assert r["num_tokens"] == n and len(seen) == n
    steady = seen[budget:]
    assert {s[0] for s in steady} == {budget}, "KV tokens constant at the budget once full"
    assert max(s[0] for s in seen) <= budget
    layers = len(r["memory_stats"])
    units = 1 if granularity == "shared" else layers  # rows of positions: one set, or one per layer
    # strength, age and one trace: 12 bytes per token per layer
    assert {s[1] for s in steady} == {budget * layers * 12}, "memory state bounded by the budget"
    assert {s[2] for s in steady} == {budget * units} and {s[3] for s in steady} == {budget}
    assert r["memory_state_bytes"] == budget * layers * 12
    assert r["evicted_tokens"] == r["prompt_tokens"] + n - 1 - budget
    assert rss[1] - rss[0] < 32 * 2**20, f"RSS grew {(rss[1] - rss[0]) / 2**20:.1f} MiB over 200 tokens"
    assert_clean(llm.model)


# -- safe loading --------------------------------------------------------------------------
def test_remote_code_and_pickles_are_off_by_default(monkeypatch):
    import inspect

    import transformers

    for fn in (EbbinghausLLM.__init__, load_model):
        params = inspect.signature(fn).parameters
        assert params["trust_remote_code"].default is False
        assert params["allow_pickle"].default is False
    seen = []

    def fake(kind):
        def from_pretrained(name, **kwargs):
            seen.append((kind, kwargs))
            raise OSError("offline")
        return from_pretrained

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake("tok"))
    with pytest.raises(ModelNotAvailableError, match="offline default"):
        load_model("someone/some-model")
    assert seen[-1][1]["trust_remote_code"] is False
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: object())
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake("model"))
    for kwargs, remote, safetensors in [({}, False, True), ({"trust_remote_code": True}, True, True),
                                        ({"allow_pickle": True}, False, None)]:
        with pytest.raises(ModelNotAvailableError):
            load_model("someone/some-model", **kwargs)
        assert seen[-1][1]["trust_remote_code"] is remote
        assert seen[-1][1]["use_safetensors"] is safetensors


def test_pickled_checkpoint_needs_allow_pickle(tmp_path, tokenizer):
    model = _fresh_model(tokenizer)
    model.config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelNotAvailableError):
        load_model(str(tmp_path))
    loaded = load_model(str(tmp_path), allow_pickle=True).model
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_cache_entry_validation(tmp_path):
    from memollm.models import _cache_entry_is_valid, _digest

    source = tmp_path / "m.gguf"
    source.write_bytes(b"gguf" * 100)
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "model.safetensors").write_bytes(b"weights" * 100)
    (entry / "config.json").write_text("{}")
    assert not _cache_entry_is_valid(entry, source)  # no marker: half-written
    meta = {"format": 1, "source": str(source), "source_size": source.stat().st_size, "files": _digest(entry)}
    (entry / "memollm-complete.json").write_text(json.dumps(meta))
    assert _cache_entry_is_valid(entry, source)
    with open(entry / "model.safetensors", "r+b") as fh:  # same size, one byte flipped
        fh.seek(10)
        fh.write(b"X")
    assert not _cache_entry_is_valid(entry, source)
    (entry / "memollm-complete.json").write_text("{not json")
    assert not _cache_entry_is_valid(entry, source)


def test_corrupt_cache_entry_is_detected_and_rebuilt(llm, tmp_path, monkeypatch, caplog):
    """Costs one GGUF conversion (~15 s): the only rebuild in the suite."""
    from memollm.models import _cache_entry_is_valid, bundled_model_dir, cache_root, ensure_cache_root

    gguf = bundled_model_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf"
    entries = [p for p in cache_root().iterdir() if (p / "memollm-complete.json").is_file()
               and json.loads((p / "memollm-complete.json").read_text()).get("source") == str(gguf)]
    assert entries, "the bundled model's cache entry exists after loading it"
    src = entries[0]
    root = tmp_path / "cache" / "memollm"
    monkeypatch.setenv("MEMOLLM_CACHE", str(root))
    assert cache_root() == root
    assert ensure_cache_root() == root and stat.S_IMODE(root.stat().st_mode) == 0o700
    copy = root / src.name
    os.makedirs(copy)
    for f in src.iterdir():
        if f.name == "model.safetensors":  # a truncated (half-written) weights file
            with open(f, "rb") as fh_in, open(copy / f.name, "wb") as fh_out:
                fh_out.write(fh_in.read(1 << 20))
        else:
            shutil.copy(f, copy / f.name)
    (root / ".building-leftover").mkdir()  # a crashed earlier build leaves this behind
    assert not _cache_entry_is_valid(copy, gguf)
    with caplog.at_level(logging.WARNING, logger="memollm"):
        rebuilt = load_model()
    assert any("corrupt" in rec.getMessage() for rec in caplog.records)
    assert _cache_entry_is_valid(copy, gguf)
    assert (copy / "model.safetensors").stat().st_size == (src / "model.safetensors").stat().st_size
    assert stat.S_IMODE(copy.stat().st_mode) == 0o700
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    ids = llm.encode("What is deep learning?")
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.model(ids).logits, llm.model(ids).logits)
