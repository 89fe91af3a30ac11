"""Helpers the test files share.

The scripts under ``tools/`` and ``demo/`` are scripts, not packages: :func:`load_script`
imports one as a module so that tests can call its functions in-process, and
:func:`run_script` runs one as a user would, on the CPU.
"""
import importlib
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Mapping, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The tiny RetinaNet-S12 of tests/configs (96 px images, two images, six iterations).
DET_CFG = REPO / 'tests/configs/retinanet_poolformer_s12_tools.py'
#: CPU runs everywhere (gloo for the multi-process ones), also on a machine that has a GPU.
CPU_ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore', CUDA_VISIBLE_DEVICES='')


def load_script(relpath: str) -> ModuleType:
    """Load ``<repo>/<relpath>.py`` as a module, e.g. ``'demo/image_demo'``."""
    name = 'script_' + relpath.replace('/', '_')
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / f'{relpath}.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    spec.loader.exec_module(module)
    return module


def _kill_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_script(*args, cwd: Path = REPO, env: Optional[dict] = None, ok: bool = True,
               timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command (a ``.py`` first argument runs with this interpreter) on the CPU.

    With ``ok``, fail the test with the command's output unless it exits 0.
    """
    cmd = list(map(str, args))
    if cmd[0].endswith('.py'):
        cmd.insert(0, sys.executable)
    # Its own process group, so that a run past `timeout` (or an interrupted test) takes every
    # process it started with it: torchrun's workers too, not only the command.
    child = subprocess.Popen(cmd, cwd=cwd, env=env or CPU_ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(child)
        out, err = child.communicate()
        pytest.fail(f'{cmd} still running after {timeout} s: killed it and every process it '
                    f'started.\n{out[-4000:]}\n{err[-4000:]}', pytrace=False)
    except BaseException:
        _kill_group(child)
        raise
    proc = subprocess.CompletedProcess(cmd, child.returncode, out, err)
    if ok:
        assert proc.returncode == 0, f'{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}'
    return proc


def build_model(config: Path, cfg_options: Optional[dict] = None):
    """Build and initialise the model of a config as the Runner would (no checkpoint).

    Returns:
        ``(cfg, model)``, the model in eval mode.
    """
    from metaformer_runner import load_config
    cfg = load_config(str(config), cfg_options or None)
    registry = importlib.import_module(f'{cfg.default_scope}.registry')
    model = registry.MODELS.build(cfg.model)
    model.init_weights()
    return cfg, model.eval()


def detector_state(**cfg_options) -> dict:
    """Freshly initialised weights of the tiny RetinaNet-S12 (with config overrides)."""
    return build_model(DET_CFG, cfg_options)[1].state_dict()


@pytest.fixture(scope='module')
def det_weights() -> dict:
    """:func:`detector_state` without overrides, built once per test file."""
    return detector_state()


def demo_error(*argv) -> str:
    """Run demo/image_demo.py in-process; return its error message (it must fail)."""
    with pytest.raises(SystemExit) as exc:
        load_script('demo/image_demo').main([str(a) for a in argv])
    assert isinstance(exc.value.code, str), exc.value.code  # a message, not a bare exit code
    return exc.value.code


def metrics_of(work_dir: Path) -> dict:
    """The metrics mmengine wrote for the last evaluation under ``work_dir``."""
    records = []
    for path in sorted(work_dir.glob('*/vis_data/scalars.json')) + \
            sorted(work_dir.glob('*/*.json')):
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {k: v for r in records for k, v in r.items()}


def reported_metric(metrics: Mapping[str, float], key: str) -> float:
    """``metrics[key]``, asserting that the evaluator reported it as a finite number >= 0.

    A broken evaluation fails this: the key missing (the metric did not run, or under another
    name), NaN (a model whose outputs went NaN), or mmdet's -1 (nothing to evaluate: no ground
    truth reached the metric). After the one training iteration of a test a floor on the value
    would be flaky; what training reaches is recorded by benchmarks/learning.py in
    benchmarks/results/learning_*.json.
    """
    assert key in metrics, f'no {key!r} among the reported metrics {sorted(metrics)}'
    value = float(metrics[key])
    assert math.isfinite(value) and value >= 0, f'{key} = {value}'
    return value

