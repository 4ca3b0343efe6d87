#!/usr/bin/env bash
# The GPU check, one script for a lent GPU machine (run from the repository root):
#   CUDA tests (compiled FlexAttention vs the dense mask, cached == uncached, CUDA graphs == eager,
#   fast training vs plain fp32), then the paper-sized benchmarks with random weights:
#   `bench infer --preset lingbot-4b` (eager cached / CUDA graph / CUDA graph of compiled layers /
#   the same with the expert's weights fused, sdpa; cached flex)
#   and `bench train --preset lingbot-4b` (bf16, compiled layers, activation checkpointing; then
#   with LoRA, with the VLM frozen, with 8-bit AdamW states and with CPU offload, for the memory table).
# Each step has its own time limit and the steps run in order of importance, so a slow or broken
# step costs only itself. Output: $OUT/gpu_check.log (everything) and $OUT/results.jsonl (the
# benchmarks' JSON lines). Wheels for packages the machine lacks (av, a matching transformers)
# can be put in .whl/ and are installed into /tmp/site first.
set -uo pipefail
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-480}  # seconds for the whole script; a step is skipped when too little is left
PRESET=${PRESET:-lingbot-4b} DEVICE=${DEVICE:-cuda} BATCH=${BATCH:-16}  # PRESET=tiny DEVICE=cpu: a dry run
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec > >(tee -a "$LOG") 2>&1

if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2 left=$((BUDGET - SECONDS))
    shift 2
    if ((left < 30)); then echo "=== $name skipped: ${left}s left"; return; fi
    ((limit > left)) && limit=$left
    echo "=== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout -k 5 "$limit" "$@" 2>&1 | tee "$OUT/.step"
    local rc=${PIPESTATUS[0]}
    grep '^{' "$OUT/.step" >> "$OUT/results.jsonl"
    echo "--- $name rc=$rc in $((SECONDS - t0))s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, transformers, av; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'transformers', transformers.__version__, 'av', av.__version__, torch.cuda.get_device_name())"

LV="$PY -m lingvla.cli"
step infer_sdpa 300 $LV bench infer --preset $PRESET --device $DEVICE --dtype bfloat16 --attn-backend sdpa \
    --repeats 20 --warmup 3 --cuda-graphs --compile --fuse-expert --skip-uncached
step cuda_tests 300 $PY -m pytest -q tests/test_cuda.py tests/test_model_graphed.py
step train_compiled 200 $LV bench train --preset $PRESET --device $DEVICE --batch $BATCH --steps 10 --warmup 4 --workers 6 \
    --set model.tokenizer=tiny parallel.compile=true parallel.activation_checkpointing=true
# memory options at the same batch (peak GiB and samples/s in the JSON lines): LoRA on the VLM and
# vision tower (expert trained fully), both frozen, 8-bit AdamW states, and CPU offload
step train_lora 150 $LV bench train --preset $PRESET --device $DEVICE --batch $BATCH --steps 8 --warmup 3 --workers 6 \
    --set model.tokenizer=tiny parallel.compile=true parallel.activation_checkpointing=true \
    optim.lora_rank=16 "optim.lora_targets=[vision,vlm]"
step train_frozen 120 $LV bench train --preset $PRESET --device $DEVICE --batch $BATCH --steps 8 --warmup 3 --workers 6 \
    --set model.tokenizer=tiny parallel.compile=true parallel.activation_checkpointing=true \
    optim.freeze_vision=true optim.freeze_llm=true
step train_8bit 120 $LV bench train --preset $PRESET --device $DEVICE --batch $BATCH --steps 8 --warmup 3 --workers 6 \
    --set model.tokenizer=tiny parallel.compile=true parallel.activation_checkpointing=true optim.states=8bit
step train_offload 150 $LV bench train --preset $PRESET --device $DEVICE --batch $BATCH --steps 6 --warmup 2 --workers 6 \
    --set model.tokenizer=tiny parallel.compile=true parallel.activation_checkpointing=true parallel.cpu_offload=true
step infer_flex 90 $LV bench infer --preset $PRESET --device $DEVICE --dtype bfloat16 --attn-backend flex \
    --repeats 20 --warmup 3 --skip-uncached
rm -f "$OUT/.step"
echo "=== done in ${SECONDS}s"
