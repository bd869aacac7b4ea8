"""memollm.attention: the masks and logit biases the registered attention function applies, and the
attention each cached key received (received_attention, grouped-query heads included)."""

from __future__ import annotations

import pytest
import torch

from memollm.attention import add_logit_bias, combine_mask, received_attention
from memollm_testutils import one_thread

_one_thread = one_thread()


def test_combine_mask_keeps_causality_and_hides_keys():
    allowed = torch.tensor([[True, False, True, True]])
    m = combine_mask(None, allowed, q_len=2, kv_len=4, dtype=torch.float32)
    assert m.shape == (1, 1, 2, 4)
    assert m[0, 0].tolist() == [[True, False, True, False], [True, False, True, True]]
    float_mask = torch.zeros(1, 1, 1, 4)
    out = combine_mask(float_mask, allowed, 1, 4, torch.float32)
    assert out[0, 0, 0, 1] == torch.finfo(torch.float32).min and out[0, 0, 0, 0] == 0


def test_logit_bias_is_a_log_weight():
    w = torch.tensor([[0.5, 1.0, 0.25]])
    mask = add_logit_bias(None, torch.log(w), q_len=1, kv_len=3, dtype=torch.float32)
    logits = torch.zeros(3)
    p = torch.softmax(logits + mask[0, 0, 0], -1)
    torch.testing.assert_close(p, w[0] / w.sum())


def test_received_attention_matches_eager_softmax_with_gqa():
    torch.manual_seed(0)
    q = torch.randn(1, 6, 3, 8)  # 6 query heads, 2 KV heads: groups of 3
    k = torch.randn(1, 2, 5, 8)
    got = received_attention(q, k, None, 0.3)
    k_all = k.repeat_interleave(3, dim=1)
    a = torch.softmax(q[:, :, -1:] @ k_all.transpose(-1, -2) * 0.3, -1)[:, :, 0]  # [1, heads, kv]
    torch.testing.assert_close(got, a.mean(1))
    assert got.sum().item() == pytest.approx(1.0)
    hide = torch.tensor([True, False, True, True, True])[None, None, None, :].expand(1, 1, 3, 5)
    masked = received_attention(q, k, hide, 0.3)
    assert masked[0, 1] == 0 and masked.sum().item() == pytest.approx(1.0)
