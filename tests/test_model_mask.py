"""The blockwise causal mask against a hand-written reference, and the two backends agreeing."""

import torch

from lingvla.model.attention import (ACTION_BLOCK, PREFIX_BLOCK, STATE_BLOCK, AttentionMask, attend,
                                     build_mask, dense_mask)


def reference_allowed(blocks, valid):
    """Straight from the rule: q sees k iff k is valid and block(k) <= block(q)."""
    n = len(blocks)
    return [[bool(valid[k]) and blocks[k] <= blocks[q] for k in range(n)] for q in range(n)]


def test_dense_mask_matches_reference_rule():
    # 4 prefix tokens (one padded), a state token, 3 action tokens.
    blocks = [PREFIX_BLOCK] * 4 + [STATE_BLOCK] + [ACTION_BLOCK] * 3
    valid = [True, True, False, True, True, True, True, True]
    got = dense_mask(torch.tensor([blocks]), torch.tensor([blocks]), torch.tensor([valid]))[0, 0]
    assert got.tolist() == reference_allowed(blocks, valid)
    # Spot-check the semantics in words.
    assert not got[0, 4] and not got[0, 5]  # prefix never sees state or actions
    assert got[4, 0] and got[4, 4] and not got[4, 5]  # state sees prefix and itself, not actions
    assert got[5, 4] and got[5, 7] and got[7, 5]  # actions see state and each other (both ways)
    assert not got[:, 2].any()  # nobody sees the padded token


def test_random_masks_match_reference():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = int(torch.randint(2, 30, (1,), generator=g))
        blocks = torch.randint(0, 3, (n,), generator=g).sort().values
        valid = torch.rand(n, generator=g) > 0.3
        got = dense_mask(blocks[None], blocks[None], valid[None])[0, 0]
        assert got.tolist() == reference_allowed(blocks.tolist(), valid.tolist())


def test_flex_backend_agrees_with_sdpa_on_cpu_forward():
    g = torch.Generator().manual_seed(1)
    b, hq, hkv, n, d = 2, 4, 2, 40, 16
    q = torch.randn(b, hq, n, d, generator=g)
    k = torch.randn(b, hkv, n, d, generator=g)
    v = torch.randn(b, hkv, n, d, generator=g)
    blocks = torch.cat([torch.zeros(b, 30), torch.ones(b, 1), torch.full((b, 9), 2)], 1).long()
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[0, 20:30] = False  # right-padded prompt in sample 0
    dense = attend(q, k, v, build_mask(blocks, blocks, valid, "sdpa"))
    flex = attend(q, k, v, build_mask(blocks, blocks, valid, "flex"))
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)


def test_sdpa_mask_matches_explicit_softmax():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 6, 8, generator=g) for _ in range(3))
    blocks = torch.tensor([[0, 0, 0, 1, 2, 2]])
    valid = torch.tensor([[True, False, True, True, True, True]])
    mask = dense_mask(blocks, blocks, valid)
    scores = (q @ k.transpose(-1, -2)) / 8 ** 0.5
    expected = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v
    got = attend(q, k, v, AttentionMask("sdpa", dense=mask))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
