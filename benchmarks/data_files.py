"""Random samples over a dataset split into many data files: seconds per batch with the data-file
cache held by size (the default, 512 MiB) against a cache of one file (what a count-limited cache
gives once the files outnumber it). Prints one JSON line.

    python benchmarks/data_files.py DATASET_DIR [--batches 20 --batch-size 32 --image-size 112]

DATASET_DIR: a LeRobot dataset of several data files, e.g. one `lingvla gen-demos --depth` wrote
(depth maps make its files hold ~11 transfer-cube episodes each).
"""

from __future__ import annotations

import argparse
import json
import time


def seconds_per_batch(root: str, cache_mb: float, batches: int, batch_size: int, image_size: int) -> float:
    import numpy as np

    from lingvla.data.samples import RobotDataset, SampleSpec

    dataset = RobotDataset(root, "aloha", spec=SampleSpec(image_size=image_size, camera_slots=("head",)),
                           preload_images=True, data_cache_mb=cache_mb)
    order = np.random.default_rng(0).integers(0, len(dataset), size=(batches + 1) * batch_size)
    for i in order[:batch_size]:  # warm-up batch
        dataset[int(i)]
    start = time.perf_counter()
    for i in order[batch_size:]:
        dataset[int(i)]
    return (time.perf_counter() - start) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=112)
    args = parser.parse_args()
    from lingvla.data.lerobot import LeRobotDataset

    files = len({str(e.data_path) for e in LeRobotDataset(args.dataset).episodes})
    by_size = seconds_per_batch(args.dataset, 512, args.batches, args.batch_size, args.image_size)
    one_file = seconds_per_batch(args.dataset, 1e-6, args.batches, args.batch_size, args.image_size)
    print(json.dumps({"data_files": files, "batch_size": args.batch_size, "s_per_batch_cache_512mb": round(by_size, 4),
                      "s_per_batch_cache_one_file": round(one_file, 4), "ratio": round(one_file / by_size, 1)}))


if __name__ == "__main__":
    main()
