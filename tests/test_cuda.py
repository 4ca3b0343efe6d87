"""Checks that need a GPU (skipped without one; CI has none, the device runs them with
`bash benchmarks/gpu_check.sh`): compiled FlexAttention against the dense mask, both backends
through the whole model, cached == uncached sampling, and the trainer on CUDA with bf16, compiled
layers, activation checkpointing and flex against the plain fp32 run."""

import json

import pytest
import torch

from lingvla.model.attention import QueryGroups, attend, build_mask
from lingvla.train.config import load_train_config
from lingvla.train.loop import train

from conftest import make_batch, tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def exact_matmuls():
    # TF32 would make the fp32 comparisons below loose for reasons that are not ours.
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def _blocks(b, prefix, suffix_actions):
    return torch.cat([torch.zeros(b, prefix), torch.ones(b, 1), torch.full((b, suffix_actions), 2)], 1).long()


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-3), (torch.bfloat16, 2e-2)])
def test_compiled_flex_matches_dense_mask(dtype, tol):
    """Lengths off the 128 tile, padding in one sample, grouped-query heads, depth-query groups,
    and a suffix-only query block against the full key sequence (the cached inference shape)."""
    g = torch.Generator().manual_seed(0)
    b, hq, hkv, d = 2, 8, 2, 64
    prefix, actions = 203, 50
    n = prefix + 1 + actions
    blocks = _blocks(b, prefix, actions).cuda()
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[0, 150:prefix] = False
    valid = valid.cuda()
    kind = torch.zeros(n, dtype=torch.long)
    cam = torch.full((n,), -1, dtype=torch.long)
    for c in range(3):  # 3 cameras x (60 image tokens + 4 depth queries), then text
        cam[c * 64:(c + 1) * 64] = c
        kind[c * 64 + 60:(c + 1) * 64] = 1
    groups = QueryGroups(kind.cuda(), cam.cuda(), kind.cuda(), cam.cuda())
    q = torch.randn(b, hq, n, d, generator=g).to("cuda", dtype)
    k = torch.randn(b, hkv, n, d, generator=g).to("cuda", dtype)
    v = torch.randn(b, hkv, n, d, generator=g).to("cuda", dtype)
    for grp in (None, groups):
        dense = attend(q, k, v, build_mask(blocks, blocks, valid, "sdpa", grp))
        flex = attend(q, k, v, build_mask(blocks, blocks, valid, "flex", grp))
        torch.testing.assert_close(flex.float(), dense.float(), atol=tol, rtol=tol)
    sq = blocks[:, prefix:]
    dense = attend(q[:, :, prefix:], k, v, build_mask(sq, blocks, valid, "sdpa"))
    flex = attend(q[:, :, prefix:], k, v, build_mask(sq, blocks, valid, "flex"))
    torch.testing.assert_close(flex.float(), dense.float(), atol=tol, rtol=tol)


def test_model_loss_and_gradients_agree_across_backends():
    batch = make_batch(tiny_model().config, batch_size=3, seed=3, real_dims=14, pad_from=40)
    noise = torch.randn(3, 50, 32, generator=torch.Generator().manual_seed(1)).cuda()
    t = torch.tensor([0.1, 0.5, 0.9]).cuda()
    results = {}
    for backend in ("sdpa", "flex"):
        model = tiny_model(attn_backend=backend).cuda().train()
        loss, _ = model(batch, noise=noise, t=t)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[backend] = (loss.detach(), grads)
    torch.testing.assert_close(results["flex"][0], results["sdpa"][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results["flex"][1], results["sdpa"][1], atol=5e-4, rtol=5e-3)


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_cached_sampling_equals_uncached_on_cuda(backend):
    model = tiny_model(attn_backend=backend).cuda()
    batch = make_batch(model.config, batch_size=2, seed=4, real_dims=14)
    noise = torch.randn(2, 50, 32, generator=torch.Generator().manual_seed(2)).cuda()
    cached = model.sample_actions(batch, noise=noise, use_cache=True)
    uncached = model.sample_actions(batch, noise=noise, use_cache=False)
    torch.testing.assert_close(cached, uncached, atol=1e-4, rtol=1e-4)
    cpu = tiny_model(attn_backend="sdpa").sample_actions(batch, noise=noise.cpu())
    torch.testing.assert_close(cached.cpu(), cpu, atol=1e-4, rtol=1e-4)


def _losses(out):
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def test_fast_cuda_training_tracks_plain_fp32(tmp_path):
    from safetensors.torch import load_file

    from lingvla.data.synthetic import write_synthetic_dataset
    from lingvla.model.lingvla import LingVLA

    data = write_synthetic_dataset(tmp_path / "data", num_episodes=2, episode_length=60, image_hw=(56, 56))

    def config(name, **extra):
        base = {"model.preset": "tiny", "model.image_size": 56, "batch_size": 4, "steps": 4,
                "output_dir": str(tmp_path / name), "data.num_workers": 0, "save_every": 100,
                "tensorboard": "false", "optim.warmup_steps": 0, "optim.lr": 1e-3, "device": "cuda",
                "data.datasets": f"[{{path: {data}, embodiment: aloha}}]"}
        base.update(extra)
        return load_train_config(None, [f"{k}={v}" for k, v in base.items()])

    train(config("plain", **{"parallel.mixed_precision": "fp32", "parallel.attn_backend": "sdpa"}),
          progress=False)
    train(config("fast", **{"parallel.mixed_precision": "bf16", "parallel.attn_backend": "flex",
                            "parallel.compile": "true", "parallel.activation_checkpointing": "true"}),
          progress=False)
    plain, fast = _losses(tmp_path / "plain"), _losses(tmp_path / "fast")
    assert set(plain) == set(fast) == {1, 2, 3, 4}
    for step in plain:
        assert fast[step] == pytest.approx(plain[step], rel=5e-2), (plain, fast)
    state = load_file(str(tmp_path / "fast" / "export" / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in state.values())  # fp32 master weights
    LingVLA.from_pretrained(tmp_path / "fast" / "export")
