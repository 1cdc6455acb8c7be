#!/usr/bin/env bash
# The GPU measurements in one run, for an H100/H200 (needs torch, timm, safetensors,
# scikit-learn): ours and the official ViT-S/16 step side by side, the full step fed by 16
# data-loader workers with colour, and with crops and colour, batched on the GPU, ours compiled,
# then the batched colour and crop steps on the GPU. Under 2 minutes on an H200 without the
# compiled variant and the batched-crop loader run (not yet measured on a GPU). Results (JSON and
# logs) go to $OUT, or benchmarks/results without it.
#
#   OFFICIAL=/path/to/bytedance-ibot-checkout bash benchmarks/gpu.sh
#
# The official code is measured, never committed: see benchmarks/README.md ("On a GPU").
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
official=${OFFICIAL:-.official_ibot}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

nvidia-smi -L 2>&1 | tee "$out/gpu_machine.log"
"$python" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())" \
    2>&1 | tee -a "$out/gpu_machine.log"

status=0
"$python" benchmarks/pretrain.py --device cuda --settings vit_small --official-repo "$official" \
    --vit-batch 64 --workers 16 --steps 20 --warmup 5 --repeats 1 \
    --ours colour:run.precision=bf16,data.batched_color=true \
    --ours crops:run.precision=bf16,data.batched_color=true,data.batched_crops=true \
    --out "$out/pretrain_gpu.json" 2>&1 | tee "$out/pretrain_gpu.log" || status=1
"$python" benchmarks/pretrain.py --device cuda --settings vit_small --vit-batch 64 --steps 20 --warmup 5 \
    --repeats 1 --no-loader --ours bf16:run.precision=bf16 --ours compiled:run.precision=bf16,run.compile=true \
    --out "$out/pretrain_gpu_compiled.json" 2>&1 | tee "$out/pretrain_gpu_compiled.log" || status=1
"$python" benchmarks/augment.py --colour-device cuda --out "$out/augment_gpu.json" 2>&1 \
    | tee "$out/augment_gpu.log" || status=1
exit $status
