"""Mixtures of datasets (and embodiments) with weights, and a loader whose position resumes exactly.

The sampler is a pure function of (seed, position): global position P falls in block P // 4096,
whose dataset choices are drawn from a generator seeded by (seed, block) with the mixture weights;
the j-th draw from dataset d takes element j % n_d of a permutation of that dataset seeded by
(seed, d, j // n_d), so each dataset is walked through without repeats, epoch after epoch. The
number of draws per dataset before a block is replayed from the choices (cheap) or read from the
saved state. Rank r of W takes global positions q * W + r. A loader's state is the position of the
next batch the trainer will consume (not what workers have prefetched), so a resumed run sees
exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from lingvla.data.config import DataConfig
from lingvla.data.samples import RobotDataset, SampleSpec, collate_with_report

BLOCK = 4096
STATE_VERSION = 1


class MixtureDataset(torch.utils.data.Dataset):
    """Several RobotDatasets behind one index space (dataset after dataset)."""

    def __init__(self, datasets: list[RobotDataset]):
        if not datasets:
            raise ValueError("a mixture needs at least one dataset")
        widths = {(d.action_dim, d.chunk_size, d.image_size, d.camera_slots) for d in datasets}
        if len(widths) != 1:
            raise ValueError(f"datasets of one mixture must share action_dim, chunk_size, image_size and "
                             f"camera slots; got {sorted(widths)}")
        self.datasets = list(datasets)
        self.sizes = np.array([len(d) for d in datasets], dtype=np.int64)
        if (self.sizes == 0).any():
            empty = [str(d.source.root) for d, n in zip(datasets, self.sizes) if n == 0]
            raise ValueError(f"empty dataset(s) in the mixture: {empty}")
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        d = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return d, int(index - self.offsets[d])

    def __getitem__(self, index: int) -> dict:
        d, local = self.locate(int(index))
        return self.datasets[d][local]

    @property
    def skipped(self) -> int:
        return sum(d.skipped for d in self.datasets)


def mixture_weights(datasets: list[RobotDataset], weights="hours") -> np.ndarray:
    """Sampling probability per dataset: "hours" (proportional to recorded time), "frames",
    "uniform", or explicit non-negative numbers."""
    if isinstance(weights, str):
        if weights == "hours":
            w = np.array([d.hours for d in datasets], dtype=np.float64)
        elif weights == "frames":
            w = np.array([len(d) for d in datasets], dtype=np.float64)
        elif weights == "uniform":
            w = np.ones(len(datasets))
        else:
            raise ValueError(f"weights {weights!r}: use 'hours', 'frames', 'uniform' or a list of numbers")
    else:
        w = np.asarray(list(weights), dtype=np.float64)
        if len(w) != len(datasets):
            raise ValueError(f"{len(w)} weights for {len(datasets)} datasets")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"mixture weights must be finite, >= 0 and not all 0; got {w.tolist()}")
    return w / w.sum()


class MixtureSampler:
    """Deterministic, infinite, resumable stream of mixture indices (see the module docstring)."""

    def __init__(self, sizes, weights, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.weights = np.asarray(weights, dtype=np.float64)
        if len(self.sizes) != len(self.weights):
            raise ValueError("one weight per dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.position = 0  # this rank's next position when iterated directly
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self._counts: dict[int, np.ndarray] = {0: np.zeros(len(self.sizes), dtype=np.int64)}
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._perms: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def _choices(self, block: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 0x6D6978, block])
        return rng.choice(len(self.sizes), size=BLOCK, p=self.weights)

    def _counts_at(self, block: int) -> np.ndarray:
        """Draws per dataset before ``block``, replayed from the nearest known earlier block."""
        known = max(b for b in self._counts if b <= block)
        counts = self._counts[known].copy()
        for b in range(known, block):
            counts += np.bincount(self._choices(b), minlength=len(self.sizes))
        self._counts[block] = counts
        if len(self._counts) > 256:  # keep block 0 and the recent ones
            for b in sorted(self._counts)[1:-128]:
                del self._counts[b]
        return counts.copy()

    def _perm(self, dataset: int, epoch: int) -> np.ndarray:
        key = (dataset, epoch)
        if key not in self._perms:
            rng = np.random.default_rng([self.seed, 0x706572, dataset, epoch])
            self._perms[key] = rng.permutation(int(self.sizes[dataset]))
            while len(self._perms) > 2 * len(self.sizes):
                self._perms.popitem(last=False)
        return self._perms[key]

    def _block(self, block: int) -> np.ndarray:
        cached = self._blocks.get(block)
        if cached is not None:
            return cached
        choices = self._choices(block)
        base = self._counts_at(block)
        self._counts.setdefault(block + 1, base + np.bincount(choices, minlength=len(self.sizes)))
        out = np.empty(BLOCK, dtype=np.int64)
        for d in range(len(self.sizes)):
            where = np.flatnonzero(choices == d)
            if not len(where):
                continue
            draws = base[d] + np.arange(len(where))
            epochs = draws // self.sizes[d]
            local = np.empty(len(where), dtype=np.int64)
            for epoch in np.unique(epochs):
                sel = epochs == epoch
                local[sel] = self._perm(d, int(epoch))[draws[sel] % self.sizes[d]]
            out[where] = self.offsets[d] + local
        self._blocks[block] = out
        while len(self._blocks) > 4:
            self._blocks.popitem(last=False)
        return out

    def global_position(self, position: int) -> int:
        return position * self.world_size + self.rank

    def indices(self, start: int, count: int) -> list[int]:
        """Mixture indices of this rank's positions start .. start + count - 1."""
        out = []
        for q in range(start, start + count):
            p = self.global_position(q)
            out.append(int(self._block(p // BLOCK)[p % BLOCK]))
        return out

    def __iter__(self):
        while True:
            index = self.indices(self.position, 1)[0]
            self.position += 1
            yield index

    def state_dict(self, position: int | None = None) -> dict:
        """The state at ``position`` (default: the next position this sampler will yield)."""
        position = self.position if position is None else position
        p = self.global_position(position)
        block = p // BLOCK
        return {"version": STATE_VERSION, "position": int(position), "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "sizes": self.sizes.tolist(),
                "weights": self.weights.tolist(), "block": int(block),
                "block_counts": self._counts_at(block).tolist()}

    def check_state(self, state: dict) -> int:
        """Validate a state against this sampler; returns its position. A state saved by another
        number of processes carries over by its place in the global order: every rank of a
        consistent checkpoint stands at the same position q, so q x saved world size global
        positions were consumed, which this rank resumes from (they must split evenly)."""
        mismatch = [k for k, mine in (("seed", self.seed), ("sizes", self.sizes.tolist())) if state.get(k) != mine]
        if not np.allclose(state.get("weights", []), self.weights, rtol=0, atol=1e-12):
            mismatch.append("weights")
        if mismatch:
            raise ValueError(f"loader state does not match this mixture ({', '.join(mismatch)} differ): "
                             f"saved {[(k, state.get(k)) for k in mismatch if k != 'weights']}")
        self._counts[int(state["block"])] = np.asarray(state["block_counts"], dtype=np.int64)
        position, saved_world = int(state["position"]), int(state.get("world_size", 1))
        if saved_world == self.world_size:
            if state.get("rank") != self.rank:
                raise ValueError(f"loader state of rank {state.get('rank')} given to rank {self.rank}")
            return position
        consumed = position * saved_world
        if consumed % self.world_size:
            raise ValueError(f"loader state at global position {consumed} (saved by {saved_world} processes) "
                             f"does not split evenly over {self.world_size} processes")
        return consumed // self.world_size

    def load_state_dict(self, state: dict) -> None:
        self.position = self.check_state(state)


class _Batches:
    """The batch sampler a DataLoader draws from: consecutive positions from ``start``."""

    def __init__(self, sampler: MixtureSampler, batch_size: int, start: int):
        self.sampler, self.batch_size, self.start = sampler, batch_size, start

    def __iter__(self):
        q = self.start
        while True:
            yield self.sampler.indices(q, self.batch_size)
            q += self.batch_size


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


class ResumableLoader:
    """Infinite iterator of collated batches with ``state_dict()`` / ``load_state_dict()``.

    ``skipped`` counts samples skipped under on_bad_sample="skip" (reasons in ``skip_reasons``,
    the last 100).
    """

    def __init__(self, dataset: MixtureDataset, sampler: MixtureSampler, *, batch_size: int,
                 num_workers: int = 0, pin_memory: bool = False, prefetch_factor: int = 2,
                 multiprocessing_context=None):
        self.dataset, self.sampler, self.batch_size = dataset, sampler, int(batch_size)
        self.num_workers, self.pin_memory, self.prefetch_factor = num_workers, pin_memory, prefetch_factor
        self.multiprocessing_context = multiprocessing_context
        self.position = 0
        self.skipped = 0
        self.skip_reasons: list[str] = []

    def __iter__(self):
        # A generator of its own: the DataLoader draws a seed for its workers when an iterator is
        # made, which would otherwise advance the global RNG (and so depend on when it happens).
        generator = torch.Generator().manual_seed(self.sampler.seed * 7_919 + self.position)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=_Batches(self.sampler, self.batch_size, self.position),
            generator=generator,
            num_workers=self.num_workers, collate_fn=collate_with_report, pin_memory=self.pin_memory,
            worker_init_fn=_worker_init if self.num_workers else None,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
            multiprocessing_context=self.multiprocessing_context if self.num_workers else None)
        for batch, skipped in loader:
            self.position += self.batch_size
            if skipped:
                self.skipped += len(skipped)
                self.skip_reasons = (self.skip_reasons + skipped)[-100:]
            yield batch

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(self.position), "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.position = self.sampler.check_state(state["sampler"])
        self.skipped = int(state.get("skipped", 0))

    def report(self) -> dict:
        return {"position": self.position, "skipped": self.skipped, "skip_reasons": self.skip_reasons[-5:]}


SPEC_KEYS = ("root", "embodiment", "weight", "episode_frames", "episodes", "exclude_episodes")


def _dataset_specs(datasets) -> list[dict]:
    specs = []
    for item in datasets:
        if isinstance(item, dict):
            spec = dict(item)
            if "root" not in spec and "path" in spec:
                spec["root"] = spec.pop("path")
        elif isinstance(item, (tuple, list)):
            spec = {"root": item[0], "embodiment": item[1] if len(item) > 1 else None}
            if len(item) > 2:
                spec["weight"] = item[2]
        else:
            spec = {"root": item}
        unknown = set(spec) - set(SPEC_KEYS)
        if unknown or "root" not in spec:
            raise ValueError(f"dataset spec {item!r}: use a path, (path, embodiment[, weight]) or "
                             f"a dict with keys {{{', '.join(SPEC_KEYS)}}}")
        specs.append(spec)
    return specs


def make_dataloader(data: DataConfig, spec: SampleSpec, *, batch_size: int, norm_stats=None, seed: int = 0,
                    start_state: dict | None = None, rank: int | None = None, world_size: int | None = None,
                    pin_memory: bool = False, prefetch_factor: int = 2) -> ResumableLoader:
    """A resumable loader of training batches over a weighted mixture of datasets.

    data: the `data:` section of a training config. Its datasets are {"path", "embodiment",
        "weight", "episode_frames", "episodes", "exclude_episodes"} dicts, (path, embodiment[,
        weight]) tuples or paths (embodiment from info.json's robot_type); weights given there
        override data.weights ("hours", "frames", "uniform" or a list, one per dataset);
        episode_frames [start, stop] keeps that window of each episode, episodes /
        exclude_episodes keep / leave out those episodes (RobotDataset). data.num_workers,
        on_bad_sample, preload_images and embodiment_paths apply to every dataset.
    spec: what each sample holds (SampleSpec.for_model(model_config, normalization=...)).
    norm_stats: norm_stats.json path or dict holding every embodiment of the mixture (default
        data.norm_stats).
    rank/world_size: default to torch.distributed's when it is initialised, else 0/1.
    start_state: a ``loader.state_dict()`` saved earlier; the loader continues from it.
    """
    from lingvla.data.embodiments import load_registry

    norm_stats = data.norm_stats if norm_stats is None else norm_stats
    if norm_stats is None:
        raise ValueError("make_dataloader needs norm_stats (a norm_stats.json path or dict); "
                         "compute it with `lingvla stats DATASET_DIR --embodiment NAME`")
    if not data.datasets:
        raise ValueError("data.datasets is empty: give at least one dataset")
    if rank is None or world_size is None:
        dist = torch.distributed
        initialised = dist.is_available() and dist.is_initialized()
        rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        world_size = world_size if world_size is not None else (dist.get_world_size() if initialised else 1)
    registry = load_registry(data.embodiment_paths or None)
    specs = _dataset_specs(data.datasets)
    members = [RobotDataset(s["root"], s.get("embodiment"), spec=spec, norm_stats=norm_stats, registry=registry,
                            on_bad_sample=data.on_bad_sample, episode_frames=s.get("episode_frames"),
                            episodes=s.get("episodes"), exclude_episodes=s.get("exclude_episodes"),
                            preload_images=data.preload_images)
               for s in specs]
    weights = data.weights
    explicit = [s.get("weight") for s in specs]
    if any(w is not None for w in explicit):
        if any(w is None for w in explicit):
            raise ValueError("give a weight for every dataset or for none")
        weights = explicit
    mixture = MixtureDataset(members)
    sampler = MixtureSampler(mixture.sizes, mixture_weights(members, weights), seed=seed, rank=rank,
                             world_size=world_size)
    loader = ResumableLoader(mixture, sampler, batch_size=batch_size, num_workers=data.num_workers,
                             pin_memory=pin_memory, prefetch_factor=prefetch_factor)
    if start_state is not None:
        loader.load_state_dict(start_state)
    return loader
