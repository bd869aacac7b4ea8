"""Shared fixtures: the bundled model (loaded once), tiny random models per architecture, and one
small benchmark run (records that test_bench.py and test_viz.py both read)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def llm():
    """The bundled SmolLM2-135M-Instruct, offline (fp32 on CPU)."""
    from memollm import EbbinghausLLM

    return EbbinghausLLM()


@pytest.fixture(scope="session")
def tokenizer(llm):
    return llm.tokenizer


def tiny_config(arch: str, vocab_size: int):
    """A 4-layer random model of ``arch`` small enough to run every mode in a second."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    if arch == "llama":
        return tf.LlamaConfig(**common)
    if arch == "qwen2":
        return tf.Qwen2Config(**common)
    if arch == "qwen3":
        return tf.Qwen3Config(**common, head_dim=16)
    if arch == "mistral":
        return tf.MistralConfig(**common, sliding_window=None)
    if arch == "phi3":
        return tf.Phi3Config(**common, pad_token_id=0)
    if arch == "gemma2":
        return tf.Gemma2Config(**common, head_dim=16)
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=4, n_head=4, n_positions=1024)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                num_attention_heads=4, max_position_embeddings=1024)
    raise ValueError(arch)


ARCHS = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gpt2", "gpt_neox"]


@pytest.fixture(scope="session")
def make_tiny(tokenizer):
    """``make_tiny(arch)`` -> EbbinghausLLM wrapping a seeded random model (cached per arch)."""
    from transformers import AutoModelForCausalLM

    from memollm import EbbinghausLLM

    built: dict[str, EbbinghausLLM] = {}

    def make(arch: str = "llama") -> EbbinghausLLM:
        if arch not in built:
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer)), attn_implementation="sdpa")
            built[arch] = EbbinghausLLM(model=model.eval(), tokenizer=tokenizer)
        return built[arch]

    return make


BENCH_BUDGET = 40  # >= sink_tokens + recent_window + 1 with the default config


@pytest.fixture(scope="session")
def tiny(make_tiny):
    """A seeded random Llama-shaped model with the bundled tokenizer: fast, and exact to compare."""
    return make_tiny("llama")


@pytest.fixture(scope="session")
def bench_result(make_tiny):
    """One fair benchmark on the tiny Llama: every mode, evict with two policies at ``BENCH_BUDGET``,
    contexts of 24 and 64 tokens, 5 new tokens, 2 rounds (run once)."""
    from memollm import MODES
    from memollm.bench.runner import run_benchmark
    from memollm.bench.timing import make_cases

    cases = make_cases(MODES, ["ebbinghaus", "streaming"], [BENCH_BUDGET])
    return run_benchmark(make_tiny("llama"), [24, 64], cases, new_tokens=5, repeats=2, warmup=1, bandwidth=1e10,
                         progress=False)
