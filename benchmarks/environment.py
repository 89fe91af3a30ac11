"""Where a record was made: the machine and the package versions, the one way every benchmark
and study captures them (``machine_info``, ``versions``) and writes them (``describe``)."""
from __future__ import annotations

import os
import platform
from typing import Dict

import torch

__all__ = ['PACKAGES', 'machine_info', 'versions', 'describe']

#: The packages a record names the versions of (those installed), by import name.
PACKAGES = ('torch', 'timm', 'mmengine', 'mmcv', 'mmdet', 'mmseg', 'mmpretrain')
#: Distribution names that differ from the import name.
_DISTRIBUTIONS = {'mmseg': 'mmsegmentation'}


def versions() -> Dict[str, str]:
    """``{'python': ..., package: version}`` for the installed packages of :data:`PACKAGES`."""
    import importlib.metadata as md
    out = {'python': platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = md.version(_DISTRIBUTIONS.get(pkg, pkg))
        except md.PackageNotFoundError:
            continue
    return out


def machine_info(device: torch.device) -> Dict[str, object]:
    """The CPU model, logical CPUs, torch threads, OMP_NUM_THREADS, platform, device (and GPU)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    info = dict(cpu=cpu, logical_cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                omp_num_threads=os.environ.get('OMP_NUM_THREADS', 'unset'),
                platform=platform.platform(), device=device.type)
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


def describe(machine: Dict[str, object], versions: Dict[str, str]) -> str:
    """One sentence for a record's markdown: the machine, then the versions."""
    where = (f'GPU {machine["gpu"]}, ' if machine.get('gpu') else '') + (
        f'{machine["cpu"]}, {machine["logical_cpus"]} logical CPUs, '
        f'torch threads {machine["torch_threads"]}')
    return f'{where}; ' + ', '.join(f'{k} {v}' for k, v in versions.items())
