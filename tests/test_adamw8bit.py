"""AdamW with 8-bit moments (optim.states: 8bit): the codes' rounding error, the update against
torch.optim.AdamW and the memory it holds (through FSDP2 and a resharded resume: test_train.py)."""

import pytest
import torch

from lingvla.train.adamw8bit import BLOCK, AdamW8bit, _codes, dequantize, quantize


def test_blockwise_codes_round_within_a_few_percent():
    signed, unsigned = _codes("cpu")
    torch.manual_seed(0)
    x = torch.randn(5, 3, 700) * torch.logspace(-4, 0, 700)  # last dim not a multiple of the block
    index, scales = quantize(x, True)
    assert index.dtype == torch.uint8 and index.shape == x.shape and scales.shape == (5, 3, -(-700 // BLOCK))
    y = dequantize(index, scales, signed)
    big = x.abs() >= 1e-5 * scales.repeat_interleave(BLOCK, -1)[..., :700]
    assert ((y - x).abs() / x.abs())[big].max() < 0.057
    assert torch.equal(torch.sign(y[big]), torch.sign(x[big]))
    v = x.abs() ** 2 * 1e-9
    index, scales = quantize(v.sqrt(), False, positive_floor=True)
    back = dequantize(index, scales, unsigned) ** 2
    assert (back > 0).all()  # a positive second moment never becomes 0 (the update divides by it)
    assert ((back - v).abs() / v).max() < 0.076
    # the computed index is the code value nearest on the log scale (a brute-force search agrees)
    probe = torch.logspace(-5.9, 0, 997) * torch.tensor([1.0, -1.0]).repeat(499)[:997]
    index, scales = quantize(probe[None], True)
    chosen = torch.log(signed[index.long()[0]].abs() * scales[0].repeat_interleave(BLOCK)[:997])
    ladder = torch.log(signed[signed > 0].double())
    best = (torch.log(probe.abs().double() / scales[0].repeat_interleave(BLOCK)[:997].double())[:, None]
            - ladder[None]).abs().min(dim=1).values
    logs = torch.log(probe.abs().double())
    assert ((chosen.double() - logs).abs() <= best + 1e-5).all()
    zeros, zero_scales = quantize(torch.zeros(2, 300), True)
    assert torch.equal(dequantize(zeros, zero_scales, signed), torch.zeros(2, 300))


def _fit(optimizer_class, steps=300):
    torch.manual_seed(0)
    a = torch.randn(2048, 64)
    truth = torch.randn(64, 300)
    b = a @ truth + 0.1 * torch.randn(2048, 300)
    torch.manual_seed(1)
    weight = torch.nn.Parameter(torch.randn(64, 300) * 0.1)
    bias = torch.nn.Parameter(torch.zeros(300))
    opt = optimizer_class([weight, bias], lr=3e-2, betas=(0.9, 0.95), weight_decay=0.01)
    for _ in range(steps):
        rows = torch.randint(0, 2048, (128,))
        loss = ((a[rows] @ weight + bias - b[rows]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return weight.detach(), bias.detach(), loss.item(), opt


def test_update_tracks_torch_adamw_and_holds_a_quarter_of_the_state():
    w_ref, b_ref, loss_ref, ref = _fit(torch.optim.AdamW)
    w, b, loss, opt = _fit(AdamW8bit)
    assert (w - w_ref).norm() / w_ref.norm() < 0.02
    assert loss == pytest.approx(loss_ref, rel=0.1)
    state = opt.state[opt.param_groups[0]["params"][0]]
    assert state["exp_avg_q"].dtype == torch.uint8 and state["exp_avg_sq_q"].dtype == torch.uint8
    held = sum(t.numel() * t.element_size() for k, t in state.items() if k != "step")
    full = sum(t.numel() * t.element_size() for k, t in ref.state[ref.param_groups[0]["params"][0]].items()
               if k != "step")
    assert held < 0.27 * full
    # a 1-D weight (the bias) keeps fp32 moments
    assert set(opt.state[opt.param_groups[0]["params"][1]]) == {"step", "exp_avg", "exp_avg_sq"}


def test_fp32_path_is_torch_adamw():
    """Weights kept at fp32 moments follow torch.optim.AdamW to rounding."""
    torch.manual_seed(0)
    start = torch.randn(40)
    grads = [torch.randn(40) for _ in range(20)]
    got = []
    for cls in (torch.optim.AdamW, AdamW8bit):
        p = torch.nn.Parameter(start.clone())
        opt = cls([p], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        got.append(p.detach())
    torch.testing.assert_close(got[1], got[0], rtol=1e-6, atol=1e-7)


def test_bad_hyperparameters_are_named():
    with pytest.raises(ValueError, match="betas"):
        AdamW8bit([torch.nn.Parameter(torch.zeros(2))], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr"):
        AdamW8bit([torch.nn.Parameter(torch.zeros(2))], lr=-1.0)
