#!/usr/bin/env bash
# iBOT pre-training on every GPU of a SLURM allocation: one torchrun per machine.
#   sbatch --nodes=4 docs/launch/slurm_pretrain.sh --preset vit_base_16 --data /data/imagenet --output-dir RUN
# Arguments go to 'ibot pretrain' unchanged. A requeued job continues from RUN's checkpoint (--resume auto).
#SBATCH --job-name=ibot-pretrain
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=80
#SBATCH --time=72:00:00
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail

GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-8}
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=${IBOT_RDZV_PORT:-29500}

srun --kill-on-bad-exit=1 torchrun \
    --nnodes="$SLURM_JOB_NUM_NODES" --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv-backend=c10d --rdzv-endpoint="$HEAD_NODE:$PORT" --rdzv-id="$SLURM_JOB_ID" \
    -m ibot.cli pretrain --resume auto "$@"
