#!/usr/bin/env bash
# Train with GPUS processes on this machine through torchrun (tools/train.py --launcher pytorch).
# Usage: tools/dist_train.sh CONFIG GPUS [train.py args...]
# On a machine without CUDA the processes train on CPU with the gloo backend.
# Multi-node: set NNODES, NODE_RANK and MASTER_ADDR on every node; PORT picks the rendezvous port.
# MAX_RESTARTS (default 0): torchrun restarts all workers up to this many times when one dies, and
# the restarted workers resume from the newest complete checkpoint in the work dir by themselves.
# PYTHON picks the interpreter (default: the repository's .venv if present, else python).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG GPUS [tools/train.py args...]" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
MAX_RESTARTS=${MAX_RESTARTS:-0}
if [ "$MAX_RESTARTS" -gt 0 ]; then
    # Restarted workers must meet on a store the dead attempt never wrote to. Otherwise a restarted
    # rank reads its peer's dead address (gloo: "connectFullMesh failed ... Connection refused";
    # nccl: the old unique id, pytorch#135712) before the peer has rewritten it: the restart
    # fails, or (where that address answers again) it can wait out the process group timeout.
    # torchrun's static rendezvous and, by default, its c10d rendezvous both hand every attempt
    # the agent's one store, with keys unprefixed; c10d with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
    # has rank 0 host a new store on a new free port each attempt. c10d numbers the nodes itself.
    export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
    RDZV=(--rdzv-backend=c10d --rdzv-endpoint="${MASTER_ADDR:-127.0.0.1}:${PORT:-29500}"
          --max-restarts="$MAX_RESTARTS")
else
    RDZV=(--node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}"
          --master_port="${PORT:-29500}")
fi
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" "${RDZV[@]}" --nproc_per_node="$GPUS" \
    "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "${@:3}"
