"""Starting multi-process runs, also on machines without CUDA.

mmengine's launcher calls ``torch.cuda.set_device`` unconditionally and defaults to nccl, so
multi-process runs cannot start on a CPU-only machine; :func:`setup_distributed` starts a gloo
process group itself there (the Runner then finds it initialised and keeps it).

Neither mmengine nor torch tears the process group down when a run ends: each process exits
with its gloo threads still running, and a process whose peer has already closed the
connection can die in C++ (``terminate called without an active exception``, SIGABRT) after
all its work is done, failing a finished job. :func:`teardown_distributed` ends it cleanly.
"""
from __future__ import annotations

import datetime
import gc
import logging
import os
import subprocess
from typing import Any

import torch
import torch.distributed as dist
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log

__all__ = ['setup_distributed', 'teardown_distributed']


def _env_int(name: str) -> int:
    if name not in os.environ:
        raise ValueError(f'Distributed launch needs the environment variable {name}: start the '
                         'tool through tools/dist_*.sh (torchrun), tools/slurm_*.sh or mpirun.')
    return int(os.environ[name])


def _rank_and_world(launcher: str) -> tuple[int, int, int]:
    """Read ``(rank, world size, local rank)`` the way the launcher publishes them."""
    if launcher == 'pytorch':  # torchrun also sets MASTER_ADDR / MASTER_PORT
        return _env_int('RANK'), _env_int('WORLD_SIZE'), _env_int('LOCAL_RANK')
    if launcher == 'slurm':
        if 'MASTER_ADDR' not in os.environ:
            nodes = os.environ.get('SLURM_NODELIST', '')
            first = subprocess.run(['scontrol', 'show', 'hostnames', nodes], check=True,
                                   capture_output=True, text=True).stdout.split()[0]
            os.environ['MASTER_ADDR'] = first
        os.environ.setdefault('MASTER_PORT', '29500')
        return (_env_int('SLURM_PROCID'), _env_int('SLURM_NTASKS'), _env_int('SLURM_LOCALID'))
    if launcher == 'mpi':
        if 'MASTER_ADDR' not in os.environ:
            raise ValueError('--launcher mpi needs MASTER_ADDR (and optionally MASTER_PORT) '
                               'set to the address of rank 0.')
        os.environ.setdefault('MASTER_PORT', '29500')
        return (_env_int('OMPI_COMM_WORLD_RANK'), _env_int('OMPI_COMM_WORLD_SIZE'),
                _env_int('OMPI_COMM_WORLD_LOCAL_RANK'))
    raise ValueError(f"launcher must be 'none', 'pytorch', 'slurm' or 'mpi', got {launcher!r}")


def _sync_bn_to_bn(node: Any) -> int:
    """Replace ``norm_cfg`` types 'SyncBN' / 'MMSyncBN' by 'BN' in place; return how many."""
    count = 0
    if isinstance(node, dict):
        if node.get('type') in ('SyncBN', 'MMSyncBN'):
            node['type'] = 'BN'
            count += 1
        for value in node.values():
            count += _sync_bn_to_bn(value)
    elif isinstance(node, (list, tuple)):
        count += sum(_sync_bn_to_bn(value) for value in node)
    return count


def setup_distributed(cfg: Config, launcher: str) -> None:
    """Prepare ``cfg`` for ``launcher`` and, on machines without CUDA, start the process group.

    With CUDA present nothing is started: mmengine's own launcher (nccl by default) does it
    inside the Runner. Without CUDA the config is switched to gloo, the process group is started
    here, DDP is told not to pin the model to a device (CPU modules take ``device_ids=None``),
    and SyncBN layers (GPU-only in torch; mmseg's heads use them) become plain BN.

    Args:
        cfg: Config, edited in place (``env_cfg.dist_cfg``, ``model_wrapper_cfg``, ``model``).
        launcher: 'none', 'pytorch', 'slurm' or 'mpi'.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return
    rank, world_size, local_rank = _rank_and_world(launcher)
    for name, value in (('RANK', rank), ('WORLD_SIZE', world_size), ('LOCAL_RANK', local_rank)):
        os.environ[name] = str(value)  # mmengine's wrap_model reads LOCAL_RANK

    env_cfg = cfg.setdefault('env_cfg', ConfigDict())
    dist_cfg = env_cfg.setdefault('dist_cfg', ConfigDict())
    dist_cfg['backend'] = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg') or ConfigDict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    if wrapper.get('type', 'MMDistributedDataParallel') == 'MMDistributedDataParallel':
        wrapper['device_ids'] = None  # the Runner would pass [LOCAL_RANK], which CPU DDP rejects
    cfg.model_wrapper_cfg = wrapper

    replaced = _sync_bn_to_bn(cfg.model)
    if replaced:
        print_log(f'No CUDA: {replaced} SyncBN layers of the config become per-process BN '
                  '(torch SyncBatchNorm runs on GPUs only).', logger='current',
                  level=logging.WARNING)

    if not dist.is_initialized():
        timeout = dist_cfg.get('timeout')
        kwargs = {} if timeout is None else dict(timeout=datetime.timedelta(seconds=timeout))
        dist.init_process_group('gloo', rank=rank, world_size=world_size, **kwargs)


def teardown_distributed() -> None:
    """Destroy the default process group, if any, before the process exits.

    Without it, a rank that exits after its peer (gloo on CPU; seen at the end of a 2-process
    run in about one run in 15, and in a third of runs of a 30-line gloo script) is killed by
    SIGABRT at interpreter shutdown, and torchrun reports the whole job failed.

    ``destroy_process_group`` only drops torch's own references: the gloo threads stop when
    the last holder lets go, and DDP (the Runner's model wrapper) is one. Drop the Runner
    first; the garbage collection here frees it (it sits in reference cycles with its loops).
    """
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()
