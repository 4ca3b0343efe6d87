"""The policy on the tiny preset: no leakage through the mask, cached == uncached sampling,
masked loss, gradients, learning, save/load, bad input."""

import pytest
import torch

from conftest import make_batch, tiny_model
from lingvla.model import flow
from lingvla.model.lingvla import LingVLA


def joint_outputs(model, batch, noise, t):
    inputs = model.prepare(batch, train=True)
    x_t = flow.interpolate(inputs["actions"], noise, t)
    prefix = model.embed_prefix(inputs["images"], inputs["image_mask"], inputs["tokens"],
                                inputs["token_mask"])
    suffix, cond = model.embed_suffix(inputs["state"], x_t, t, inputs["action_dim_mask"])
    with torch.no_grad():
        prefix_out, suffix_out = model.forward_joint(prefix, suffix, cond)
    return prefix_out, suffix_out, prefix.valid


def fixed_noise(model, batch, seed=5):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    return torch.randn(len(batch["prompt"]), c.chunk_size, c.action_dim, generator=g)


def test_state_and_actions_never_reach_the_prefix(model):
    batch = make_batch(model.config)
    noise, t = fixed_noise(model, batch), torch.tensor([0.3, 0.8])
    prefix_a, suffix_a, _ = joint_outputs(model, batch, noise, t)
    other = dict(batch, state=batch["state"] + 1.0, actions=batch["actions"] * -2.0)
    prefix_b, suffix_b, _ = joint_outputs(model, other, noise * 3.0, torch.tensor([0.9, 0.1]))
    assert torch.equal(prefix_a, prefix_b), "prefix hidden states changed with suffix inputs"
    assert not torch.allclose(suffix_a, suffix_b), "the suffix must depend on its inputs"


def test_padded_prompt_tokens_and_missing_cameras_change_nothing(model):
    batch = make_batch(model.config)
    noise, t = fixed_noise(model, batch), torch.tensor([0.5, 0.5])
    prefix_a, suffix_a, valid = joint_outputs(model, batch, noise, t)

    # Same prompt, but the padding positions hold other token ids.
    original = model.prompt_tokenizer.pad_id
    model.prompt_tokenizer.pad_id = original + 7
    try:
        prefix_b, suffix_b, valid_b = joint_outputs(model, batch, noise, t)
    finally:
        model.prompt_tokenizer.pad_id = original
    assert torch.equal(valid, valid_b)
    assert torch.equal(suffix_a, suffix_b)
    assert torch.equal(prefix_a[valid], prefix_b[valid])

    # A camera marked missing: its pixels are irrelevant.
    missing = dict(batch, image_mask=torch.tensor([[True, False, True]] * 2))
    changed = dict(missing, images=missing["images"].clone())
    changed["images"][:, 1] = 255 - changed["images"][:, 1]
    _, suffix_c, _ = joint_outputs(model, missing, noise, t)
    _, suffix_d, _ = joint_outputs(model, changed, noise, t)
    assert torch.equal(suffix_c, suffix_d)
    assert not torch.allclose(suffix_a, suffix_c), "masking a camera must change the output"


def test_cached_sampling_equals_uncached(model):
    batch = make_batch(model.config, batch_size=3, prompts=["a", "insert the peg into the socket", "x y"])
    noise = fixed_noise(model, batch)
    cached = model.sample_actions(batch, noise=noise, use_cache=True)
    uncached = model.sample_actions(batch, noise=noise, use_cache=False)
    assert cached.shape == (3, model.config.chunk_size, model.config.action_dim)
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cached, noise)


def test_sampling_is_deterministic_given_noise_and_respects_num_steps(model):
    batch = make_batch(model.config)
    noise = fixed_noise(model, batch)
    a = model.sample_actions(batch, noise=noise)
    b = model.sample_actions(batch, noise=noise)
    assert torch.equal(a, b)
    assert not torch.allclose(model.sample_actions(batch, noise=noise, num_steps=3), a)


def test_loss_ignores_padded_dims_and_padded_steps():
    model = tiny_model()
    batch = make_batch(model.config, real_dims=14, pad_from=40)
    noise, t = fixed_noise(model, batch), torch.tensor([0.4, 0.7])
    loss, _ = model.compute_loss(batch, noise=noise, t=t)
    # Padded dims of state/actions (and noise) are garbage: loss unchanged.
    junk = dict(batch, state=batch["state"].clone(), actions=batch["actions"].clone())
    junk["state"][:, 14:] = 100.0
    junk["actions"][:, :, 14:] = -50.0
    junk_noise = noise.clone()
    junk_noise[:, :, 14:] = 9.0
    loss_junk, _ = model.compute_loss(junk, noise=junk_noise, t=t)
    assert torch.equal(loss, loss_junk)
    # The masked loss itself: errors at padded steps/dims do not count, real ones do.
    pred = torch.randn(2, 50, 32)
    target = torch.randn(2, 50, 32)
    dim_mask, is_pad = batch["action_dim_mask"], batch["action_is_pad"]
    base = flow.masked_loss(pred, target, dim_mask, is_pad)
    perturbed = pred.clone()
    perturbed[:, 40:] += 1000.0
    perturbed[:, :, 14:] = float("nan")
    assert torch.equal(flow.masked_loss(perturbed, target, dim_mask, is_pad), base)
    perturbed[:, 0, 0] = target[:, 0, 0] + 100.0
    assert flow.masked_loss(perturbed, target, dim_mask, is_pad) > base
    expected = ((pred - target)[:, :40, :14] ** 2).mean()
    torch.testing.assert_close(base, expected)
    l1 = flow.masked_loss(pred, target, dim_mask, is_pad, "l1")
    torch.testing.assert_close(l1, (pred - target)[:, :40, :14].abs().mean())


def test_gradients_reach_both_streams():
    model = tiny_model().train()
    loss, _ = model.compute_loss(make_batch(model.config), generator=torch.Generator().manual_seed(0))
    loss.backward()

    def grad_norm(module):
        return sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)

    assert grad_norm(model.vision) > 0
    assert grad_norm(model.embed_tokens) > 0
    assert grad_norm(model.layers[0].vlm.self_attn) > 0
    assert grad_norm(model.layers[0].vlm.mlp) > 0
    for layer in model.layers:
        assert grad_norm(layer.expert) > 0
        assert layer.expert.input_layernorm.gamma.weight.grad.abs().sum() > 0
    for head in (model.state_proj, model.action_in_proj, model.action_out_proj,
                 model.action_time_mlp_in, model.action_time_mlp_out):
        assert grad_norm(head) > 0
    # Exactly the parameters declared unused get no gradient.
    no_grad = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()}
    assert no_grad == set(model.unused_parameter_names())


def test_one_step_lowers_loss_and_training_overfits_one_batch():
    model = tiny_model(seed=1).train()
    batch = make_batch(model.config, batch_size=4, seed=3)
    noise = torch.randn(4, 50, 32, generator=torch.Generator().manual_seed(9))
    t = torch.tensor([0.2, 0.4, 0.6, 0.8])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    losses = []
    for _ in range(150):
        loss, _ = model.compute_loss(batch, noise=noise, t=t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0]
    assert losses[-1] < 0.05 * losses[0], f"did not overfit: {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_save_load_gives_identical_outputs(model, tmp_path):
    model.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} >= {"model.safetensors", "config.yaml", "tokenizer"}
    loaded = LingVLA.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config
    batch = make_batch(model.config)
    noise = fixed_noise(model, batch)
    assert torch.equal(model.sample_actions(batch, noise=noise), loaded.sample_actions(batch, noise=noise))
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_load_rejects_mismatched_checkpoint(model, tmp_path):
    model.save_pretrained(tmp_path / "ckpt")
    config = model.config
    config_other = type(config).from_dict({**config.to_dict(), "action_dim": 16})
    config_other.save_yaml(tmp_path / "ckpt" / "config.yaml")
    with pytest.raises((ValueError, RuntimeError), match="action|size mismatch|shape"):
        LingVLA.from_pretrained(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        LingVLA.from_pretrained(tmp_path)


@pytest.mark.parametrize("change, message", [
    (lambda b: b.update(images=b["images"][:, :, :, :28, :28]), "image_size=56"),
    (lambda b: b.update(images=b["images"][:, :2], image_mask=b["image_mask"][:, :2]), "num_cameras=3"),
    (lambda b: b.update(images=b["images"].float()), "uint8"),
    (lambda b: b.update(state=torch.zeros(2, 40)), "action_dim=32"),
    (lambda b: b.update(prompt=["pick up the cube " * 30] * 2), "max_token_len=48"),
    (lambda b: b.update(prompt=["only one"]), "prompt"),
    (lambda b: b.update(state=torch.full((2, 32), float("nan"))), "NaN"),
    (lambda b: b.pop("action_dim_mask"), "action_dim_mask"),
])
def test_bad_input_is_a_clear_error(model, change, message):
    batch = make_batch(model.config)
    change(batch)
    with pytest.raises(ValueError, match=message):
        model.sample_actions(batch)


def test_state_dropout_zeroes_the_state_of_drawn_samples_in_training_only():
    model = tiny_model(state_dropout=0.5)
    batch = make_batch(model.config, batch_size=8)
    batch["state"][:, :14] = torch.linspace(-2, 2, 14)  # far from the normalized mean (zero)
    noise = torch.randn(8, model.config.chunk_size, model.config.action_dim,
                        generator=torch.Generator().manual_seed(1))
    t = torch.full((8,), 0.6)

    def loss(b, dropout, train=True, seed=3):
        model.config.state_dropout = dropout
        model.train(train)
        try:
            return model.compute_loss(b, noise=noise, t=t,
                                      generator=torch.Generator().manual_seed(seed))[0]
        finally:
            model.config.state_dropout = 0.5
            model.eval()

    keep = torch.rand(8, generator=torch.Generator().manual_seed(3)) >= 0.5
    assert 0 < keep.sum() < 8  # the seed draws both kinds
    by_hand = dict(batch, state=batch["state"] * keep[:, None])
    torch.testing.assert_close(loss(batch, 0.5), loss(by_hand, 0.0))
    assert abs(loss(batch, 0.5) - loss(batch, 0.0)) > 1e-5
    # Dropout 1: the state cannot matter; outside training it always does.
    moved = dict(batch, state=batch["state"] + 10.0)
    torch.testing.assert_close(loss(batch, 1.0), loss(moved, 1.0))
    assert abs(loss(batch, 1.0, train=False) - loss(moved, 1.0, train=False)) > 1e-5
    with pytest.raises(ValueError, match="state_dropout"):
        tiny_model(state_dropout=1.5)
