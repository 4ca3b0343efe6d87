"""The CUDA-graph sampler: its buffer path equals sample_actions (CPU), and on a GPU the replayed
graph equals the eager path, picks up new inputs on every call and keeps one graph per shape."""

import pytest
import torch

from lingvla.model.graphed import GraphedSampler

from conftest import make_batch, tiny_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_buffer_path_equals_sample_actions_on_cpu(model):
    sampler = GraphedSampler(model, use_graphs=False)
    for seed in (0, 1):  # the second call reuses the first call's buffers
        batch = make_batch(model.config, batch_size=2, seed=seed, real_dims=10)
        noise = torch.randn(2, model.config.chunk_size, model.config.action_dim,
                            generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(sampler.sample(batch, noise=noise),
                                   model.sample_actions(batch, noise=noise), atol=1e-6, rtol=1e-6)
    assert len(sampler.slots) == 1
    sampler.sample(make_batch(model.config, batch_size=3), noise=None)
    assert len(sampler.slots) == 2


def test_buffer_path_without_the_fixed_grid_vision(model):
    """With transformers' vision forward (host-side grid sizes) the graph starts after it."""
    import copy

    plain = copy.deepcopy(model)
    plain.vision.use_fixed_grid(False)
    sampler = GraphedSampler(plain, use_graphs=False)
    assert not sampler.whole
    batch = make_batch(model.config, batch_size=2, seed=5)
    noise = torch.randn(2, model.config.chunk_size, model.config.action_dim,
                        generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(sampler.sample(batch, noise=noise), model.sample_actions(batch, noise=noise),
                               atol=1e-5, rtol=1e-5)


def test_refusals(model):
    flex = tiny_model(attn_backend="flex")
    with pytest.raises(ValueError, match="attn_backend='sdpa'"):
        GraphedSampler(flex)
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedSampler(model, use_graphs=True)
    model.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            GraphedSampler(model)
    finally:
        model.eval()


@cuda
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_replayed_graph_equals_eager_on_cuda(dtype, tol):
    model = tiny_model().to("cuda", dtype)
    sampler = GraphedSampler(model)
    assert sampler.use_graphs
    outs = []
    for seed in (0, 1, 2):
        batch = make_batch(model.config, batch_size=2, seed=seed, real_dims=14)
        noise = torch.randn(2, model.config.chunk_size, model.config.action_dim,
                            generator=torch.Generator().manual_seed(seed)).to("cuda", dtype)
        got = sampler.sample(batch, noise=noise)
        want = model.sample_actions(batch, noise=noise)
        torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
        outs.append(got)
    assert len(sampler.slots) == 1 and next(iter(sampler.slots.values())).graph is not None
    # New inputs reach the replay (not a stale chunk), and outputs are not aliased to the buffer.
    assert not torch.allclose(outs[0], outs[1])
    assert outs[0].data_ptr() != outs[1].data_ptr()


def _modulated(model, seed=0):
    """The expert's time modulation is zero at initialisation; give it weights so that the paths
    which compute it differently can be told apart."""
    from lingvla.model.expert import AdaptiveRMSNorm

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in model.modules():
            if isinstance(norm, AdaptiveRMSNorm):
                for lin in (norm.gamma, norm.beta):
                    lin.weight.copy_(0.1 * torch.randn(lin.weight.shape, generator=g))
                    lin.bias.copy_(0.1 * torch.randn(lin.bias.shape, generator=g))
    return model


def test_fused_expert_equals_sample_actions_on_cpu():
    """fuse_expert: the expert's concatenated weights give the same chunk, and a weight changed
    in place after the first chunk is seen by the next (they are concatenated per chunk)."""
    model = _modulated(tiny_model(seed=5))
    sampler = GraphedSampler(model, use_graphs=False, fuse_expert=True)
    batch = make_batch(model.config, batch_size=2, seed=1, real_dims=10)
    noise = torch.randn(2, model.config.chunk_size, model.config.action_dim,
                        generator=torch.Generator().manual_seed(1))
    first = sampler.sample(batch, noise=noise)
    torch.testing.assert_close(first, model.sample_actions(batch, noise=noise), atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        model.layers[1].expert.post_attention_layernorm.beta.bias.add_(0.5)
        model.layers[0].expert.self_attn.v_proj.weight.mul_(1.5)
        model.layers[1].expert.mlp.up_proj.weight.mul_(0.5)
    second = sampler.sample(batch, noise=noise)
    torch.testing.assert_close(second, model.sample_actions(batch, noise=noise), atol=1e-6, rtol=1e-6)
    assert (second - first).abs().max() > 1e-2


def _compiled_counts():
    from torch._dynamo.utils import counters

    return dict(counters["graph_break"]), counters["stats"]["unique_graphs"]


def test_compiled_layers_equal_eager_on_cpu():
    """compile_layers: same chunk as the uncompiled model, and whole layers with no graph breaks
    (4 graphs: prefix fill, suffix step, windowed and full vision blocks; then the fused suffix
    step)."""
    import copy

    from torch._dynamo.utils import counters

    reference = _modulated(tiny_model(seed=3))
    model = copy.deepcopy(reference)
    torch._dynamo.reset()  # graphs other tests compiled in this process count towards the recompile limit
    counters.clear()
    sampler = GraphedSampler(model, use_graphs=False, compile_layers=True)
    assert all(layer._compiled_call_impl is not None for layer in model.layers)
    for seed in (0, 1):
        batch = make_batch(model.config, batch_size=2, seed=seed, real_dims=10)
        noise = torch.randn(2, model.config.chunk_size, model.config.action_dim,
                            generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(sampler.sample(batch, noise=noise),
                                   reference.sample_actions(batch, noise=noise), atol=1e-5, rtol=1e-5)
    breaks, graphs = _compiled_counts()
    assert breaks == {} and graphs == 4, (breaks, graphs)
    fused = GraphedSampler(model, use_graphs=False, compile_layers=True, fuse_expert=True)
    torch.testing.assert_close(fused.sample(batch, noise=noise), reference.sample_actions(batch, noise=noise),
                               atol=1e-5, rtol=1e-5)
    breaks, graphs = _compiled_counts()
    assert breaks == {} and graphs == 5, (breaks, graphs)


@cuda
@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 6e-2)])
def test_compiled_graph_equals_eager_on_cuda(dtype, tol, fuse):
    """Inductor's kernels captured in the CUDA graph (with the expert's weights fused or not)
    reproduce the uncompiled eager chunk (bf16: fused kernels round differently, so a few bf16
    steps apart after 10 Euler steps)."""
    import copy

    torch._dynamo.reset()
    reference = _modulated(tiny_model(seed=4)).to("cuda", dtype)
    sampler = GraphedSampler(copy.deepcopy(reference), compile_layers=True, fuse_expert=fuse)
    outs = []
    for seed in (0, 1):
        batch = make_batch(reference.config, batch_size=2, seed=seed, real_dims=14)
        noise = torch.randn(2, reference.config.chunk_size, reference.config.action_dim,
                            generator=torch.Generator().manual_seed(seed)).to("cuda", dtype)
        got = sampler.sample(batch, noise=noise)
        torch.testing.assert_close(got.float(), reference.sample_actions(batch, noise=noise).float(),
                                   atol=tol, rtol=tol)
        outs.append(got)
    assert not torch.allclose(outs[0], outs[1])
    assert next(iter(sampler.slots.values())).graph is not None
