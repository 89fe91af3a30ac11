"""Scaling of latency and memory with the input's short side, one fresh process per point
series (``python -m benchmarks.speed --scaling-worker ...``) for clean peak-memory numbers."""
from __future__ import annotations

import gc
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Sequence, Tuple

import torch

from .speed_models import build_backbones
from .speed_timing import run_forward, run_forward_backward, sync

ROOT = Path(__file__).resolve().parents[1]
SCALE_SHORT_SIDES = (512, 800, 1024, 1333)


def _status_kb(field: str) -> int:
    for line in open('/proc/self/status'):
        if line.startswith(field + ':'):
            return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS so the next RSS peak counts new memory only."""
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: peaks after the first may read low
        pass


def scaling_worker(impl: str, arch: str, mode: str, device_name: str, repeats: int,
                   sizes: Sequence[Tuple[int, int]]) -> List[dict]:
    """Measure scaling points, smallest input first, in this fresh process (``--scaling-worker``)."""
    device = torch.device(device_name)
    model = build_backbones(arch, [impl] if impl == 'toolkit' else ['toolkit', impl])[impl]
    model.to(device).train(mode != 'forward')
    fn = run_forward if mode == 'forward' else run_forward_backward
    # One call first, so one-time costs (kernel libraries' set-up) are in no point's numbers.
    fn(model, torch.randn(1, 3, *sizes[0]).to(device), None)
    model.zero_grad(set_to_none=True)
    rows = []
    for h, w in sizes:
        x = torch.randn(1, 3, h, w).to(device)
        _release_freed_memory()
        if device.type == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            with open('/proc/self/clear_refs', 'w') as f:  # resets the peak RSS (VmHWM)
                f.write('5')
            base = _status_kb('VmRSS') * 1024
        t0 = time.perf_counter()
        fn(model, x, None)
        sync(device)
        first = time.perf_counter() - t0
        if device.type == 'cuda':
            peak = torch.cuda.max_memory_allocated() - base
            mem_kind = 'torch.cuda.max_memory_allocated minus memory allocated before'
        else:
            peak = _status_kb('VmHWM') * 1024 - base
            mem_kind = ('peak RSS (VmHWM) minus RSS before the call, freed heap returned to the '
                        'OS before each point')
        model.zero_grad(set_to_none=True)
        times = []
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            fn(model, x, None)
            sync(device)
            times.append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
        rows.append(dict(impl=impl, arch=arch, input=[h, w], mode=mode, device=device.type,
                         first_call_s=first, median_s=statistics.median(times), times_s=times,
                         peak_mem_mb=peak / 2 ** 20, memory=mem_kind))
        del x
    return rows


def scaling_size(short: int) -> Tuple[int, int]:
    """(short, long) with COCO's typical 1.52 aspect, long side a multiple of 32."""
    return short, 32 * round(short * 1.52 / 32)


def bench_scaling(arch: str, points: Sequence[Tuple[str, str]], repeats: int,
                  device: torch.device, progress) -> list:
    """One fresh process per (implementation, mode), each measuring all sizes, smallest first."""
    sizes = [scaling_size(s) for s in SCALE_SHORT_SIDES]
    rows = []
    for impl, mode in points:
        progress.set_postfix_str(f'scaling {impl} {mode}')
        cmd = [sys.executable, '-m', 'benchmarks.speed', '--scaling-worker',
               impl, arch, mode, device.type, str(repeats),
               ','.join(f'{h}x{w}' for h, w in sizes)]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            raise RuntimeError(f'scaling worker failed: {shlex.join(cmd)}\n{out.stderr}')
        rows += json.loads(out.stdout.strip().splitlines()[-1])
        progress.update(len(sizes))
    return rows
