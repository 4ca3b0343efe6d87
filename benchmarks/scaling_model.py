"""A model on paper of data-parallel step time at 8-256 GPUs: measured compute per sample plus the
bytes FSDP2 / HSDP move per step, over assumed link bandwidths. Not a measurement of scaling.

Per GPU and optimizer step, with P parameters, per-GPU batch b, S GPUs sharding (one machine under
HSDP, all of them under plain FSDP) and R replica groups:
  compute     b x (seconds per sample, measured on one GPU)
  all-gather  bf16 parameters, in the forward and again in the backward (units reshard after
              forward): 2 x 2P bytes x (S-1)/S over the shard group's links
  reduce      fp32 gradients reduce-scattered in the shard group: 4P x (S-1)/S
  replicas    HSDP only: the fp32 gradient shard all-reduced across the R groups:
              2 x 4P/S x (R-1)/R over the inter-machine link
Step time lies between max(compute, communication) (all of it hidden behind compute, as FSDP2's
prefetching aims at) and their sum (none hidden).

    python benchmarks/scaling_model.py                       # lingbot-4b, the H200 measurement
    python benchmarks/scaling_model.py --sample-ms 40 --batch 32 --inter-gbs 25
"""

from __future__ import annotations

import argparse
import json


def step_model(gpus: int, per_node: int, params: float, batch: int, sample_s: float, intra: float,
               inter: float, hsdp: bool) -> dict:
    nodes = max(1, gpus // per_node)
    shard = per_node if hsdp else gpus
    replicas = nodes if hsdp else 1
    link = intra if (hsdp or nodes == 1) else inter  # plain FSDP over machines: the slow link bounds the ring
    frac = (shard - 1) / shard
    gather = 2 * 2 * params * frac / link
    reduce = 4 * params * frac / link
    across = 2 * (4 * params / shard) * (replicas - 1) / replicas / inter if replicas > 1 else 0.0
    compute = batch * sample_s
    comm = gather + reduce + across
    best, worst = max(compute, comm), compute + comm
    return {"gpus": gpus, "layout": f"HSDP {replicas}x{shard}" if hsdp and replicas > 1 else f"FSDP {shard}",
            "compute_s": round(compute, 3), "comm_s": round(comm, 3),
            "samples_per_s_best": round(gpus * batch / best, 1), "samples_per_s_worst": round(gpus * batch / worst, 1),
            "efficiency_best": round(compute / best, 3), "efficiency_worst": round(compute / worst, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=float, default=4.197e9, help="trainable parameters (lingbot-4b)")
    p.add_argument("--batch", type=int, default=16, help="samples per GPU per step")
    p.add_argument("--sample-ms", type=float, default=1000 / 18.85,
                   help="compute per sample on one GPU (default: 18.85 samples/s, one H200, lingbot-4b, batch 16)")
    p.add_argument("--per-node", type=int, default=8)
    p.add_argument("--intra-gbs", type=float, default=350.0, help="achievable GB/s per GPU within a machine (NVLink)")
    p.add_argument("--inter-gbs", type=float, default=40.0, help="achievable GB/s per GPU across machines (400 Gb/s IB)")
    p.add_argument("--gpus", default="8,16,32,64,128,256")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rows = []
    for gpus in (int(g) for g in args.gpus.split(",")):
        for hsdp in (False, True):
            if hsdp and gpus <= args.per_node:
                continue
            rows.append(step_model(gpus, args.per_node, args.params, args.batch, args.sample_ms / 1000,
                                   args.intra_gbs * 1e9, args.inter_gbs * 1e9, hsdp))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print("| GPUs | layout | compute s | communication s | samples/s (communication exposed .. hidden) | efficiency |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['gpus']} | {r['layout']} | {r['compute_s']} | {r['comm_s']} | "
              f"{r['samples_per_s_worst']} .. {r['samples_per_s_best']} | "
              f"{r['efficiency_worst']:.0%} .. {r['efficiency_best']:.0%} |")


if __name__ == "__main__":
    main()
