"""Depth distillation: registered and trained queries, query mask rules, position-neutral queries
(image/text states unchanged), cached sampling, teachers, and a falling depth loss."""

import pytest
import torch

from conftest import make_batch, tiny_model
from lingvla.model.attention import (ACTION_BLOCK, DEPTH_QUERY, ORDINARY, PREFIX_BLOCK, STATE_BLOCK,
                                     QueryGroups, attend, build_mask, dense_mask)
from lingvla.model.depth import HFDepthTeacher, SimDepthTeacher, make_teacher


def depth_model(seed=0, head="perceiver"):
    return tiny_model(seed, depth=dict(enabled=True, head=head))


def targets(model, batch_size=2, seed=0):
    c = model.config
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, c.num_cameras, c.depth.num_latents, c.depth.teacher_dim, generator=g)


def reference(block, kind, cam, valid):
    """The rules in words: queries of camera i see camera-i images and camera-i queries; image and
    text tokens never see queries; state/action see every valid prefix token; block rule on top."""
    n = len(block)
    out = []
    for q in range(n):
        row = []
        for k in range(n):
            ok = valid[k] and block[k] <= block[q]
            if block[q] == PREFIX_BLOCK and kind[q] == DEPTH_QUERY:
                ok = ok and cam[k] == cam[q]
            elif block[q] == PREFIX_BLOCK and kind[k] == DEPTH_QUERY:
                ok = False
            row.append(ok)
        out.append(row)
    return out


def test_query_mask_matches_reference_and_flex_agrees():
    # 2 cameras x (3 image tokens + 2 queries), 3 text tokens (1 padded), state, 2 actions.
    kind = ([ORDINARY] * 3 + [DEPTH_QUERY] * 2) * 2 + [ORDINARY] * 6
    cam = [0] * 5 + [1] * 5 + [-1] * 6
    block = [PREFIX_BLOCK] * 13 + [STATE_BLOCK] + [ACTION_BLOCK] * 2
    valid = [True] * 12 + [False] + [True] * 3
    groups = QueryGroups(*(torch.tensor(x) for x in (kind, cam, kind, cam)))
    b = torch.tensor([block])
    got = dense_mask(b, b, torch.tensor([valid]), groups)[0, 0]
    assert got.tolist() == reference(block, kind, cam, valid)
    assert got[3, 0] and got[3, 4] and not got[3, 5] and not got[3, 10]  # query: own camera only
    assert not got[0, 3] and not got[10, 3]  # image and text never see queries
    assert got[13, 3] and got[15, 8]  # state and actions do
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 16, 8, generator=g)
    k, v = torch.randn(1, 2, 16, 8, generator=g), torch.randn(1, 2, 16, 8, generator=g)
    sdpa = attend(q, k, v, build_mask(b, b, torch.tensor([valid]), "sdpa", groups))
    flex = attend(q, k, v, build_mask(b, b, torch.tensor([valid]), "flex", groups))
    torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", ["perceiver", "released"])
def test_depth_parameters_are_registered_trained_and_saved(tmp_path, head):
    from lingvla.model.lingvla import LingVLA

    model = depth_model(head=head).train()
    names = {n for n, _ in model.named_parameters()}
    assert "depth_embeddings" in names and any(n.startswith("depth_align_head.") for n in names)
    assert model.unused_parameter_names() == []
    batch = make_batch(model.config)
    batch["depth_targets"] = targets(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "depth" in n}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss, info = model.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    assert "depth_loss" in info and info["depth_loss"] > 0
    loss.backward()
    assert model.depth_embeddings.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in model.named_parameters() if n.startswith("depth_align_head."))
    opt.step()
    for n, p in model.named_parameters():
        if n in before:
            assert not torch.equal(p, before[n]), f"{n} did not change"
    model.eval().save_pretrained(tmp_path / "ckpt")
    loaded = LingVLA.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(loaded.depth_embeddings, model.depth_embeddings)
    for name, value in model.state_dict().items():
        if name.startswith("depth_align_head."):
            assert torch.equal(loaded.state_dict()[name], value), name


def test_queries_leave_image_and_text_states_unchanged_and_reach_the_actions():
    from lingvla.model import flow

    on = depth_model(seed=3)
    off = tiny_model(3)
    shared = {k: v for k, v in on.state_dict().items() if "depth" not in k}
    off.load_state_dict(shared, strict=True)
    batch = make_batch(on.config)
    noise = torch.randn(2, 50, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.3, 0.9])

    def run(model):
        inputs = model.prepare(batch, train=True)
        prefix = model.embed_prefix(inputs["images"], inputs["image_mask"], inputs["tokens"],
                                    inputs["token_mask"])
        suffix, cond = model.embed_suffix(inputs["state"], flow.interpolate(inputs["actions"], noise, t), t,
                                          inputs["action_dim_mask"])
        with torch.no_grad():
            prefix_out, suffix_out = model.forward_joint(prefix, suffix, cond)
        ordinary = prefix.kind == ORDINARY
        return prefix_out[:, ordinary], suffix_out

    prefix_on, suffix_on = run(on)
    prefix_off, suffix_off = run(off)
    torch.testing.assert_close(prefix_on, prefix_off, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(suffix_on, suffix_off, atol=1e-4)
    # Depth off restores the plain model exactly: no extra tokens, parameters or outputs.
    plain = tiny_model(3)
    plain.load_state_dict(shared)
    torch.testing.assert_close(plain.sample_actions(batch, noise=noise), off.sample_actions(batch, noise=noise),
                               atol=0, rtol=0)
    # With depth on, cached sampling still equals uncached.
    torch.testing.assert_close(on.sample_actions(batch, noise=noise, use_cache=True),
                               on.sample_actions(batch, noise=noise, use_cache=False), atol=1e-5, rtol=1e-5)


def test_missing_depth_targets_and_bad_shapes_are_clear_errors():
    model = depth_model()
    batch = make_batch(model.config)
    with pytest.raises(ValueError, match="depth_targets"):
        model.compute_loss(batch)
    batch["depth_targets"] = torch.zeros(2, 3, 5, 32)
    with pytest.raises(ValueError, match="depth.num_latents"):
        model.compute_loss(batch)


def test_sim_depth_teacher_is_fixed_and_sees_depth():
    teacher = make_teacher("sim-depth", tiny_model(depth=dict(enabled=True)).config.depth)
    depth = torch.full((2, 3, 56, 56), 0.8)
    depth[0, 0, :28] = 2.0
    tokens = teacher(depth)
    assert tokens.shape == (2, 3, 16, 32) and not tokens.requires_grad
    assert torch.equal(tokens, SimDepthTeacher(32, grid=4)(depth))  # deterministic
    assert not torch.allclose(tokens[0, 0], tokens[1, 0])  # the near/far split shows
    torch.testing.assert_close(tokens[0, 1], tokens[1, 1])
    assert not list(teacher.parameters())


def test_hf_depth_teacher_from_a_local_directory(tmp_path):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, patch_size=14, image_size=56, out_indices=[1, 2])
    config = DepthAnythingConfig(backbone_config=backbone, fusion_hidden_size=16, neck_hidden_sizes=[8, 16],
                                 reassemble_factors=[4, 2], head_hidden_size=8)
    DepthAnythingForDepthEstimation(config).save_pretrained(tmp_path / "da")
    teacher = HFDepthTeacher(tmp_path / "da")
    images = torch.randint(0, 256, (2, 3, 3, 56, 56), dtype=torch.uint8)
    tokens = teacher(images)
    assert tokens.shape == (2, 3, 16, 32)
    assert not torch.allclose(tokens[0], tokens[1])
    depth = tiny_model(depth=dict(enabled=True)).config.depth
    assert make_teacher("hf-depth", depth, str(tmp_path / "da")).num_tokens == 16
    with pytest.raises(FileNotFoundError, match="config.json"):
        HFDepthTeacher(tmp_path / "nothing")


def test_depth_loss_falls_on_generated_data():
    """Images whose brightness encodes depth; the sim-depth teacher's tokens as targets."""
    model = tiny_model(1, depth=dict(enabled=True, loss_weight=1.0)).train()
    teacher = make_teacher("sim-depth", model.config.depth)
    g = torch.Generator().manual_seed(2)
    ramp = torch.linspace(0, 1, 56)[None, None, None, :]
    depth = (0.5 + 2.0 * torch.rand(8, 3, 1, 1, generator=g) * ramp).expand(8, 3, 56, 56).contiguous()
    batch = make_batch(model.config, batch_size=8)
    pixels = (depth / depth.max() * 255).to(torch.uint8)
    batch["images"] = pixels[:, :, None].expand(8, 3, 3, 56, 56).contiguous()
    batch["depth_targets"] = teacher(depth)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        loss, info = model.compute_loss(batch, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(info["depth_loss"].item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses[::10]
