"""auto_dtype on CUDA: fp16 below compute capability 8, bf16 from 8 (Ampere) on."""

import pytest
import torch

from memollm.models import auto_dtype


@pytest.mark.parametrize("capability, expected", [((7, 5), torch.float16), ((7, 0), torch.float16),
                                                  ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_dtype_uses_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # a T4 says so under emulation
    assert auto_dtype(torch.device("cuda")) == expected
    assert auto_dtype(torch.device("cuda"), "float32") == torch.float32  # an explicit dtype wins
    assert auto_dtype(torch.device("cpu")) == torch.float32
