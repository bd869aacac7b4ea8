"""memollm.config: MemoryConfig's defaults, its validation (every knob named in its error), replace,
and the presets of the forgetting rule (the default rule and the seed's)."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest

from memollm import ConfigError, MemoryConfig
from memollm.config import KNOBS, SEED_RULE, knobs_for


def test_defaults_are_the_seeds():
    cfg = MemoryConfig()
    assert cfg.initial_strength == 5.0
    assert cfg.time_step == 0.01
    assert cfg.soft_delete_floor == 0.8
    assert cfg.sparse_threshold == 0.001
    assert cfg.layer_consensus == 0.5
    assert cfg.memory_layer_fraction == 0.5
    assert cfg.memory_layers(30) == list(range(15))
    assert cfg.memory_layers(1) == [0]  # always at least one memory layer


def test_default_rule_is_the_one_chosen_on_the_tune_split_and_the_seed_preset_restores_the_seeds():
    cfg = MemoryConfig()
    assert (cfg.review, cfg.stability, cfg.trace) == ("top_p", "fsrs", "max")
    seed = cfg.replace(**SEED_RULE)
    assert (seed.review, seed.stability, seed.trace) == ("share", "additive", "none")


BAD_CONFIGS = [
    ("initial_strength", 0.0), ("initial_strength", -1.0), ("initial_strength", math.nan),
    ("initial_strength", math.inf), ("time_step", 0.0), ("time_step", -0.01), ("time_step", math.nan),
    ("time_step", math.inf), ("soft_delete_floor", -0.1), ("soft_delete_floor", 1.5),
    ("soft_delete_floor", math.nan), ("sparse_threshold", 0.0), ("sparse_threshold", 1.0),
    ("sparse_threshold", -0.5), ("sparse_threshold", math.nan), ("layer_consensus", 0.0),
    ("layer_consensus", 1.1), ("memory_layer_fraction", 0.0), ("memory_layer_fraction", 2.0),
    ("strength_gain", -1.0), ("strength_gain", math.inf), ("review_threshold", 0.0),
    ("sink_tokens", -1), ("sink_tokens", 1.5), ("recent_window", 0), ("memory_budget", 0),
    ("memory_budget", True), ("soft_delete_target", "keys"), ("policy", "no-such-policy"),
    ("review", "glance"), ("review_top_p", 0.0), ("review_top_p", 1.5),
    ("stability", "multiplicative"), ("stability_decay", -0.1), ("retrievability_gain", math.inf),
    ("trace", "min"), ("trace_tau", 0.0),
]


@pytest.mark.parametrize("name,value", BAD_CONFIGS, ids=[f"{n}={v}" for n, v in BAD_CONFIGS])
def test_bad_config_value_names_the_parameter(name, value):
    with pytest.raises(ValueError, match=name):
        MemoryConfig(**{name: value})


@pytest.mark.parametrize("name,value", [("initial_strength", 1e-50), ("review", "no"), ("time_step", True),
                                        ("policy", ["x"]), ("memory_budget", 40.0), ("granularity", None)])
def test_validation_gaps_are_closed(name, value):
    with pytest.raises(ConfigError, match=name):
        MemoryConfig(**{name: value})


def test_numpy_numbers_are_numbers():
    cfg = MemoryConfig(initial_strength=np.float32(2.0), memory_budget=np.int64(64))
    assert cfg.initial_strength == 2.0 and cfg.memory_budget == 64


def test_budget_must_hold_sinks_window_and_one_more():
    MemoryConfig(memory_budget=4 + 32 + 1, sink_tokens=4, recent_window=32).check_mode("evict")  # the smallest
    small = MemoryConfig(memory_budget=36, sink_tokens=4, recent_window=32)
    with pytest.raises(ValueError, match="memory_budget must be >= sink_tokens \\+ recent_window \\+ 1 = 37"):
        small.check_mode("evict")
    small.check_mode("soft_delete")  # only eviction reads the budget


def test_a_knob_is_refused_only_by_the_modes_that_never_read_it():
    cfg = MemoryConfig()
    cfg.check_mode("evict", ["memory_budget", "trace", "time_step", "granularity"])
    cfg.check_mode("sparse_attention", ["granularity", "sparse_threshold", "sink_tokens"])
    for mode, knob in (("soft_delete", "granularity"), ("sparse_attention", "soft_delete_floor"),
                       ("soft_delete", "trace"), ("baseline", "sink_tokens"), ("evict", "layer_consensus")):
        with pytest.raises(ConfigError, match=f"{knob} does nothing in generation_mode='{mode}'"):
            cfg.check_mode(mode, [knob])
    assert knobs_for("soft_delete", {"memory_budget": 64, "time_step": 0.1}) == {"time_step": 0.1}
    for name, f in KNOBS.items():  # every knob's help names the modes it is limited to
        if len(f.metadata["modes"]) < 3:
            assert any(m in f.metadata["help"] for m in f.metadata["modes"]), name


def test_config_is_frozen_and_replace_validates():
    cfg = MemoryConfig()
    with pytest.raises(Exception):
        cfg.time_step = 1.0  # type: ignore[misc]
    assert cfg.replace(time_step=0.5).time_step == 0.5
    assert cfg.time_step == 0.01
    with pytest.raises(ValueError, match="time_step"):
        cfg.replace(time_step=-1)
    with pytest.raises(TypeError, match="bogus.*valid:.*time_step"):
        cfg.replace(bogus=1)
    assert MemoryConfig(**cfg.to_dict()) == cfg


@pytest.mark.parametrize("name,value", [("initial_strength", 0.0), ("initial_strength", math.inf),
                                        ("time_step", -1.0), ("time_step", math.nan),
                                        ("soft_delete_floor", 1.2), ("sparse_threshold", 1.0)])
def test_replace_names_a_bad_memory_parameter(name, value):
    """No bad value reaches generate: a config is checked when it is made, by replace too."""
    with pytest.raises(ValueError, match=name):
        MemoryConfig().replace(**{name: value})


def test_every_knob_has_its_help_kind_and_bounds_in_one_place():
    assert list(KNOBS) == [f.name for f in fields(MemoryConfig)]
    for name, f in KNOBS.items():
        assert f.metadata["help"].strip(), name
        assert f.metadata["kind"] in (bool, int, float, str), name
