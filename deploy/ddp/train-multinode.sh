#!/usr/bin/env bash
# Data-parallel training of the two-tower model across machines (Lightning DDP under torchrun): run this same script
# on every node, with the same NNODES, MASTER_ADDR and MASTER_PORT and its own NODE_RANK (0 on the master).
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 DATA=/data/recsys/export bash deploy/ddp/train-multinode.sh
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 DATA=/data/recsys/export bash deploy/ddp/train-multinode.sh
#
# DATA: what `recsys export --out DATA` wrote (interactions.parquet, item_features.npz), on every node (a shared
# volume, or copied). NPROC_PER_NODE (default 1): processes per node, one per GPU (or CPU sockets with
# ACCELERATOR=cpu: gloo). Lightning takes the world from torchrun: --num-nodes and --devices must match it. Rank 0
# writes the model to $DATA/model (OUT overrides) and prints train_stats.json. Further arguments go to the training
# entry point (python -m recsys_pipeline.models.two_tower.train --help), e.g. --max-epochs 12.
set -euo pipefail
: "${NNODES:?set NNODES, the number of machines}"
: "${NODE_RANK:?set NODE_RANK, this machine s rank: 0 .. NNODES-1}"
: "${MASTER_ADDR:?set MASTER_ADDR, the address of the NODE_RANK=0 machine}"
DATA="${DATA:-/data/recsys/export}"
NPROC_PER_NODE="${NPROC_PER_NODE:-1}"
exec torchrun \
  --nnodes "$NNODES" \
  --node-rank "$NODE_RANK" \
  --nproc-per-node "$NPROC_PER_NODE" \
  --master-addr "$MASTER_ADDR" \
  --master-port "${MASTER_PORT:-29500}" \
  -m recsys_pipeline.models.two_tower.train \
  --interactions "$DATA/interactions.parquet" \
  --features "$DATA/item_features.npz" \
  --out "${OUT:-$DATA/model}" \
  --strategy ddp \
  --num-nodes "$NNODES" \
  --devices "$NPROC_PER_NODE" \
  --accelerator "${ACCELERATOR:-auto}" \
  "$@"
