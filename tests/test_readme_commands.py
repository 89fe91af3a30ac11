"""Every command the README shows runs somewhere before a change lands.

The README's shell blocks are what a new user copies. Each command there names an entry point: a
``make`` target, or a script under ``tools/`` or ``demo/``. :func:`test_every_readme_command_is_exercised`
fails when one of them is run neither by ``.ci/run`` (the make targets) nor by a test (the
scripts), so a README command cannot break unseen. The launchers no other test file runs
(``tools/dist_test.sh``, ``tools/slurm_train.sh``, ``tools/slurm_test.sh``) run here for real on
CPU with two processes.
"""
import re
import socket
import stat
import sys
from pathlib import Path

import torch

from conftest import CPU_ENV, DET_CFG, REPO, run_script
from metaformer_dense import allow_runner_checkpoints

#: A fenced shell block of a markdown page.
SHELL_BLOCK = re.compile(r'```(?:bash|sh|shell|console)\n(.*?)```', re.S)
#: Entry points a command line can name.
SCRIPT = re.compile(r'(?<![\w/.])((?:tools|demo)/[\w-]+\.(?:py|sh))\b')
MAKE = re.compile(r'^\s*make\s+([\w-]+)')
#: Targets no CPU-only CI machine can run, and what runs them instead.
NOT_ON_CPU = {'gpu-check': 'needs a CUDA machine: it runs tests/test_gpu.py there',
              'gpu-quick': 'needs a CUDA machine: its steps run tests/test_gpu.py and the CUDA '
                           'benchmarks there'}


def readme_commands() -> list:
    """The command lines of the README's shell blocks (continuation lines joined)."""
    text = (REPO / 'README.md').read_text()
    lines = []
    for block in SHELL_BLOCK.findall(text):
        for line in block.replace('\\\n', ' ').splitlines():
            line = line.split(' #', 1)[0].strip()
            if line and not line.startswith('#'):
                lines.append(line)
    return lines


def entry_points(commands: list) -> tuple:
    """``(make targets, scripts)`` the commands run."""
    targets, scripts = set(), set()
    for line in commands:
        found = MAKE.match(line)
        if found:
            targets.add(found.group(1))
        scripts.update(SCRIPT.findall(line))
    return targets, scripts


def test_every_readme_command_is_exercised():
    commands = readme_commands()
    targets, scripts = entry_points(commands)
    assert {'demo', 'test'} <= targets, commands  # the README's two commands
    ci = (REPO / '.ci/run').read_text()
    ci_targets = {t for line in ci.splitlines() for t in re.findall(r'\bmake\s+([\w -]+)', line)
                  for t in t.split()}
    # ... and what those targets run first (`demo: setup` in the Makefile)
    prerequisites = dict(re.findall(r'^([\w-]+):([^=\n]*)$', (REPO / 'Makefile').read_text(), re.M))
    ci_targets |= {dep for t in ci_targets for dep in prerequisites.get(t, '').split()}
    unrun = sorted(t for t in targets - ci_targets if t not in NOT_ON_CPU)
    assert not unrun, f'README make targets that .ci/run does not run: {unrun}'
    tests = [p.read_text() for p in (REPO / 'tests').glob('*.py')]
    # a script is run by path ('tools/train.py') or loaded as a module ('demo/image_demo')
    untested = sorted(s for s in scripts
                      if not any(s.rsplit('.', 1)[0] in text for text in tests))
    assert not untested, f'README scripts no test runs: {untested}'
    for script in scripts:
        assert (REPO / script).is_file(), f'the README names {script}, which does not exist'


def test_the_inventory_sees_what_a_readme_shows():
    """The parser itself: a README block of these lines names these entry points."""
    # (names of no real script, so that this test counts as no script's test)
    lines = ['make demo-seg', 'python tools/a_tool.py CFG', 'NNODES=2 bash tools/a_launcher.sh 8',
             '.venv/bin/python demo/a_demo.py IMG CFG CKPT', 'cp work_dirs/vis/a.png docs/']
    targets, scripts = entry_points(lines)
    assert targets == {'demo-seg'}
    assert scripts == {'tools/a_tool.py', 'tools/a_launcher.sh', 'demo/a_demo.py'}


# --------------------------------------------------------------------------------- launchers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def load_checkpoint(path) -> dict:
    allow_runner_checkpoints()
    return torch.load(path, map_location='cpu', weights_only=True)


#: Slurm's ``srun`` for one node, as far as tools/slurm_*.sh use it: start ``--ntasks`` copies of
#: the command, each with the variables Slurm gives a task. No Slurm controller runs on CI
#: machines; what is tested is the scripts and the toolkit's slurm launcher, not Slurm.
SRUN = r'''#!/usr/bin/env bash
set -euo pipefail
ntasks=1
while [[ $# -gt 0 && "$1" == -* ]]; do
  case "$1" in
    --ntasks=*) ntasks="${1#--ntasks=}" ;;
    -p|-n|-N) shift ;;
  esac
  shift
done
pids=()
for ((i = 0; i < ntasks; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NTASKS=$ntasks SLURM_NODELIST=localhost "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
'''
#: ``scontrol show hostnames NODELIST``: the first host is rank 0's address.
SCONTROL = '#!/usr/bin/env bash\necho 127.0.0.1\n'


def slurm_env(tmp_path: Path) -> dict:
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for name, text in (('srun', SRUN), ('scontrol', SCONTROL)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return dict(CPU_ENV, PYTHON=sys.executable, PATH=f'{bin_dir}:{CPU_ENV["PATH"]}',
                MASTER_PORT=str(free_port()), GPUS='2', GPUS_PER_NODE='2', CPUS_PER_TASK='1')


def test_slurm_train_then_slurm_test_and_dist_test_with_two_processes(tmp_path):
    env = slurm_env(tmp_path)
    work = tmp_path / 'train'
    proc = run_script('tools/slurm_train.sh', 'partition', 'job', DET_CFG, work,
                      '--cfg-options', 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
                      'model.test_cfg.score_thr=0.0', env=env, timeout=600)
    log = proc.stdout + proc.stderr
    assert 'Distributed launcher: slurm' in log and 'GPU number: 2' in log, log[-3000:]
    checkpoint = work / 'iter_2.pth'
    assert load_checkpoint(checkpoint)['meta']['iter'] == 2

    proc = run_script('tools/slurm_test.sh', 'partition', 'job', DET_CFG, checkpoint,
                      '--work-dir', tmp_path / 'slurm_test', '--cfg-options',
                      'model.test_cfg.score_thr=0.0', env=env, timeout=600)
    assert 'coco/bbox_mAP' in proc.stdout + proc.stderr

    env = dict(CPU_ENV, PYTHON=sys.executable, PORT=str(free_port()))
    proc = run_script('tools/dist_test.sh', DET_CFG, checkpoint, 2, '--work-dir',
                      tmp_path / 'dist_test', '--cfg-options', 'model.test_cfg.score_thr=0.0',
                      env=env, timeout=600)
    log = proc.stdout + proc.stderr
    assert 'Distributed training: True' in log and 'GPU number: 2' in log, log[-3000:]
    assert 'coco/bbox_mAP' in log  # gathered from both ranks
