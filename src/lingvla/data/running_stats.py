"""Per-dim statistics of a stream of vectors (moments, min/max, histogram quantiles): the
arithmetic behind normalization statistics (lingvla/data/stats.py) and the per-episode stats a
LeRobot writer records (lingvla/data/lerobot.py). Knows nothing of datasets."""

from __future__ import annotations

import math

import numpy as np

QUANTILES = {"q01": 0.01, "q02": 0.02, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q98": 0.98, "q99": 0.99}
DEFAULT_BINS = 1 << 16


class RunningStats:
    """Per-dim statistics of rows [N, d] fed in batches: ``update`` over all batches (pass 1), then
    ``update_histogram`` over the same batches (pass 2), then ``result``."""

    def __init__(self, num_bins: int = DEFAULT_BINS):
        self.num_bins = int(num_bins)
        self.count = 0
        self.mean = self.m2 = self.min = self.max = None
        self.hist = None
        self.hist_count = 0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        n = len(x)
        if n == 0:  # e.g. a data file none of whose episodes are selected
            return
        x = x.reshape(n, -1)
        mean = x.mean(0)
        m2 = ((x - mean) ** 2).sum(0)
        if self.count == 0:
            self.mean, self.m2 = mean, m2
            self.min, self.max = x.min(0), x.max(0)
        else:
            if x.shape[1] != self.mean.shape[0]:
                raise ValueError(f"width changed from {self.mean.shape[0]} to {x.shape[1]}")
            total = self.count + n
            delta = mean - self.mean
            self.mean = self.mean + delta * (n / total)
            self.m2 = self.m2 + m2 + delta ** 2 * (self.count * n / total)
            self.min, self.max = np.minimum(self.min, x.min(0)), np.maximum(self.max, x.max(0))
        self.count += n

    def _bin_width(self) -> np.ndarray:
        return (self.max - self.min) / self.num_bins

    def update_histogram(self, x: np.ndarray) -> None:
        if len(x) == 0:
            return
        if self.count == 0:
            raise RuntimeError("update_histogram before update: the bin range is not known yet")
        x = np.asarray(x, dtype=np.float64)
        x = x.reshape(len(x), -1)
        d = x.shape[1]
        if self.hist is None:
            self.hist = np.zeros(d * self.num_bins, dtype=np.int64)
        width = self._bin_width()
        safe = np.where(width > 0, width, 1.0)
        idx = np.floor((x - self.min) / safe).astype(np.int64)
        np.clip(idx, 0, self.num_bins - 1, out=idx)
        idx += np.arange(d, dtype=np.int64) * self.num_bins
        self.hist += np.bincount(idx.reshape(-1), minlength=d * self.num_bins)
        self.hist_count += len(x)

    def _order_statistic(self, dim: int, cum: np.ndarray, counts: np.ndarray, k: int) -> float:
        b = int(np.searchsorted(cum, k, side="right"))
        within = k - (cum[b] - counts[b])
        width = self._bin_width()[dim]
        value = self.min[dim] + (b + (within + 0.5) / counts[b]) * width
        return float(min(max(value, self.min[dim]), self.max[dim]))

    def quantiles(self, qs: dict[str, float]) -> dict[str, list[float]]:
        if self.hist is None or self.hist_count != self.count:
            raise RuntimeError(f"the histogram pass saw {self.hist_count} rows, the first pass {self.count}")
        d = len(self.mean)
        hist = self.hist.reshape(d, self.num_bins)
        out = {name: [] for name in qs}
        for dim in range(d):
            counts = hist[dim]
            cum = np.cumsum(counts)
            for name, q in qs.items():
                rank = q * (self.count - 1)
                lo = int(math.floor(rank))
                frac = rank - lo
                a = self._order_statistic(dim, cum, counts, lo)
                b = self._order_statistic(dim, cum, counts, min(lo + 1, self.count - 1)) if frac > 0 else a
                out[name].append(a + frac * (b - a))
        return out

    def result(self, quantiles: dict[str, float] | tuple[float, ...] = QUANTILES) -> dict:
        if isinstance(quantiles, tuple):
            quantiles = {f"q{round(q * 100):02d}": q for q in quantiles}
        out = {
            "mean": self.mean.tolist(),
            "std": np.sqrt(np.maximum(self.m2 / self.count, 0.0)).tolist(),
            "min": self.min.tolist(),
            "max": self.max.tolist(),
            "count": int(self.count),
        }
        if quantiles:
            out.update(self.quantiles(quantiles))
            out["quantile_error_bound"] = self._bin_width().tolist()
            out["num_bins"] = self.num_bins
        return out
