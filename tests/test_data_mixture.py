"""Mixtures: weights, per-dataset permutations, exact resume (also with workers prefetching)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lingvla.data.config import DataConfig
from lingvla.data.mixture import BLOCK, MixtureSampler, make_dataloader, mixture_weights
from lingvla.data.samples import SampleSpec
from lingvla.data.stats import compute_norm_stats, write_norm_stats
from lingvla.data.synthetic import write_synthetic_dataset


def test_weights_realised():
    sizes, weights = [100, 300, 50], np.array([0.5, 0.3, 0.2])
    sampler = MixtureSampler(sizes, weights, seed=1)
    idx = np.array(sampler.indices(0, 3 * BLOCK))
    which = np.searchsorted(np.cumsum(sizes), idx, side="right")
    frac = np.bincount(which, minlength=3) / len(idx)
    np.testing.assert_allclose(frac, weights, atol=0.015)


def test_each_dataset_walked_without_repeats():
    sizes = [37, 1000]
    sampler = MixtureSampler(sizes, [0.5, 0.5], seed=2)
    idx = np.array(sampler.indices(0, 2000))
    small = idx[idx < 37]
    assert len(small) > 37 * 10
    for epoch in range(10):  # every consecutive run of 37 draws from dataset 0 is a permutation
        assert sorted(small[epoch * 37:(epoch + 1) * 37].tolist()) == list(range(37))
    assert MixtureSampler(sizes, [0.5, 0.5], seed=2).indices(0, 50) == idx[:50].tolist()
    assert MixtureSampler(sizes, [0.5, 0.5], seed=3).indices(0, 50) != idx[:50].tolist()


def test_resume_midway_and_ranks():
    a = MixtureSampler([500, 700], [0.3, 0.7], seed=5)
    full = a.indices(0, 3 * BLOCK + 100)
    state = a.state_dict(2 * BLOCK + 17)
    b = MixtureSampler([500, 700], [0.3, 0.7], seed=5)
    start = b.check_state(state)
    assert b.indices(start, BLOCK) == full[2 * BLOCK + 17:3 * BLOCK + 17]
    r0 = MixtureSampler([500, 700], [0.3, 0.7], seed=5, rank=0, world_size=2).indices(0, 100)
    r1 = MixtureSampler([500, 700], [0.3, 0.7], seed=5, rank=1, world_size=2).indices(0, 100)
    assert r0 == full[0:200:2] and r1 == full[1:200:2]
    with pytest.raises(ValueError, match="seed"):
        MixtureSampler([500, 700], [0.3, 0.7], seed=6).check_state(state)
    it = iter(a)  # direct iteration keeps its own position: state_dict() / load_state_dict()
    head = [next(it) for _ in range(10)]
    c = MixtureSampler([500, 700], [0.3, 0.7], seed=5)
    c.load_state_dict(a.state_dict())
    assert head == full[:10] and [next(iter(c)) for _ in range(5)] == full[10:15]


def test_a_position_carries_over_to_another_number_of_ranks():
    full = MixtureSampler([500, 700], [0.3, 0.7], seed=5).indices(0, 3 * BLOCK)
    # two ranks, each at its position 2 * BLOCK + 6 (a consistent checkpoint): 2 x that consumed
    saved = MixtureSampler([500, 700], [0.3, 0.7], seed=5, rank=1, world_size=2).state_dict(2 * BLOCK + 6)
    one = MixtureSampler([500, 700], [0.3, 0.7], seed=5)
    start = one.check_state(saved)
    assert start == 4 * BLOCK + 12
    assert one.indices(start, 8) == MixtureSampler([500, 700], [0.3, 0.7], seed=5).indices(4 * BLOCK + 12, 8)
    # and from one process onto four: rank 3 continues with every fourth global position
    saved = MixtureSampler([500, 700], [0.3, 0.7], seed=5).state_dict(BLOCK + 40)
    four = MixtureSampler([500, 700], [0.3, 0.7], seed=5, rank=3, world_size=4)
    start = four.check_state(saved)
    assert start == (BLOCK + 40) // 4 and four.indices(start, 5) == full[BLOCK + 43:BLOCK + 63:4]
    with pytest.raises(ValueError, match="does not split evenly over 4"):
        four.check_state(MixtureSampler([500, 700], [0.3, 0.7], seed=5).state_dict(BLOCK + 41))
    with pytest.raises(ValueError, match="rank 0 given to rank 3"):
        four.check_state(MixtureSampler([500, 700], [0.3, 0.7], seed=5, rank=0, world_size=4).state_dict(8))


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mix")
    a = write_synthetic_dataset(tmp / "a", lengths=[30, 20], image_hw=(32, 32), cameras=("top",), fps=50)
    b = write_synthetic_dataset(tmp / "b", lengths=[40], image_hw=(32, 32), cameras=("top",), fps=10, seed=4)
    stats = tmp / "norm_stats.json"
    write_norm_stats(stats, "aloha", compute_norm_stats([a, b], "aloha"))
    return a, b, stats


def _batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _same(x, y):
    assert x["prompt"] == y["prompt"]
    for key in ("images", "state", "actions", "action_is_pad"):
        assert torch.equal(x[key], y[key]), key


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resumes_exactly(two_datasets, workers):
    a, b, stats = two_datasets
    mixture = DataConfig(datasets=[a, b], num_workers=workers)
    kwargs = dict(batch_size=4, norm_stats=stats, seed=11)
    spec = SampleSpec(image_size=16, chunk_size=8, camera_slots=("head",))
    loader = make_dataloader(mixture, spec, **kwargs)
    it = iter(loader)
    first = [next(it) for _ in range(3)]
    state = loader.state_dict()  # workers have prefetched further; the state counts consumed batches
    assert state["sampler"]["position"] == 12
    rest = [next(it) for _ in range(3)]
    del it
    resumed = _batches(make_dataloader(mixture, spec, start_state=state, **kwargs), 3)
    for x, y in zip(rest, resumed):
        _same(x, y)
    again = _batches(make_dataloader(mixture, spec, **kwargs), 3)
    for x, y in zip(first, again):
        _same(x, y)


def test_hours_weights(two_datasets):
    from lingvla.data.samples import RobotDataset

    a, b, _ = two_datasets
    members = [RobotDataset(a, "aloha"), RobotDataset(b, "aloha")]
    # a: 50 frames at 50 fps = 1 s; b: 40 frames at 10 fps = 4 s
    np.testing.assert_allclose(mixture_weights(members, "hours"), [0.2, 0.8])
    np.testing.assert_allclose(mixture_weights(members, "frames"), [50 / 90, 40 / 90])
    np.testing.assert_allclose(mixture_weights(members, [3, 1]), [0.75, 0.25])
    with pytest.raises(ValueError, match="weights"):
        mixture_weights(members, [1, -1])
