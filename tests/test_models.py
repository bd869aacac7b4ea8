"""memollm.models: the dtype and device a model runs in (auto_dtype by CUDA compute capability) and
load_model's checks before it loads anything. Safe loading (remote code, pickles, the cache's sha256
marker) is a reliability guarantee: test_reliability.py."""

from __future__ import annotations

import pytest
import torch

from memollm import EbbinghausLLM
from memollm.models import auto_dtype


@pytest.mark.parametrize("capability, expected", [((7, 5), torch.float16), ((7, 0), torch.float16),
                                                  ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_dtype_uses_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # a T4 says so under emulation
    assert auto_dtype(torch.device("cuda")) == expected
    assert auto_dtype(torch.device("cuda"), "float32") == torch.float32  # an explicit dtype wins
    assert auto_dtype(torch.device("cpu")) == torch.float32


def test_load_model_validates_device_and_dtype_before_loading():
    from memollm import load_model

    with pytest.raises(ValueError, match="device"):
        load_model(device="nonsense")
    with pytest.raises(ValueError, match="dtype"):
        load_model(dtype="float8")
    with pytest.raises(ValueError, match="device"):
        EbbinghausLLM(device="nonsense")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_a_missing_gpu_is_a_clear_error():
    from memollm import load_model

    with pytest.raises(ValueError, match="not available here"):
        load_model(device="cuda")
