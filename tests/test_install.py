"""Installing the toolkit into a user's environment keeps the user's torch.

The scenario of issue 25: an environment with its own torch (here 2.13.0, not the lock's), the
matching torchvision, mmcv, mmdet and the rest. ``pip install <repo>`` must install the toolkit and
leave that torch alone, which it does only if the package's dependencies are ranges (setup.py reads
requirements/runtime.txt and mminstall.txt) rather than the lock's exact pins.

The environment is a fresh venv that sees the test interpreter's packages through a folder of
links, minus torch and torchvision, with the real torch 2.13.0 and torchvision 0.28.0 wheels
installed into it. pip's resolver then runs for real (``--dry-run --report``) with no index, so
it can only keep what is installed: had setup.py pinned ``torch==2.14.1``, it would either fail
to resolve or put torch in the report's install list, and the test fails either way.
"""
import json
import os
import re
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO

import metaformer_dense

LOCK = REPO / 'requirements' / 'constraints.txt'
#: Another torch than the lock's, and the torchvision built for it (it requires torch==2.13.0).
#: On this project's machines pip finds the torch wheel on disk; torchvision comes from PyPI.
OTHER_TORCH, OTHER_TORCHVISION = '2.13.0', '0.28.0'
#: Left out of the links: the user's own torch and torchvision are installed instead.
LEFT_OUT = ('torch', 'functorch', '__editable__', 'metaformer')


def _locked(name: str) -> str:
    match = re.search(rf'^{name}==(\S+)', LOCK.read_text(), re.MULTILINE)
    assert match, f'{LOCK} pins no {name}'
    return match.group(1)


def _user_environment(tmp_path: Path) -> Path:
    """A venv with torch 2.13.0 + torchvision 0.28.0 of its own and every other package linked."""
    links = tmp_path / 'links'
    links.mkdir()
    for site_dir in site.getsitepackages():
        for entry in Path(site_dir).iterdir():
            name = entry.name.lower()
            if name.startswith(LEFT_OUT) or name.endswith('.pth') or (links / entry.name).exists():
                continue
            (links / entry.name).symlink_to(entry)
    venv = tmp_path / 'user-venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
    purelib = sysconfig.get_path('purelib', vars={'base': str(venv), 'platbase': str(venv)})
    Path(purelib, '_links.pth').write_text(f'{links}\n')
    install = subprocess.run(
        [str(venv / 'bin' / 'python'), '-m', 'pip', 'install', '--quiet', '--no-deps',
         '--disable-pip-version-check', f'torch=={OTHER_TORCH}',
         f'torchvision=={OTHER_TORCHVISION}'],
        capture_output=True, text=True, timeout=600, env=_pip_env())
    if install.returncode != 0:
        pytest.skip(f'torch {OTHER_TORCH} / torchvision {OTHER_TORCHVISION} not installable here '
                    f'(no wheel on disk and no index): {install.stderr.strip()[-300:]}')
    return venv


def _pip_env() -> dict:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK='1')
    for var in ('VIRTUAL_ENV', 'PYTHONPATH', 'PYTHONHOME'):
        env.pop(var, None)
    return env


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason='needs to run inside a venv')
def test_install_keeps_the_users_torch(tmp_path):
    assert OTHER_TORCH != _locked('torch'), 'pick another torch than the lock\'s for this test'
    venv = _user_environment(tmp_path)
    python = str(venv / 'bin' / 'python')
    seen = subprocess.run([python, '-m', 'pip', 'list', '--format=json'], capture_output=True,
                          text=True, check=True, env=_pip_env())
    versions = {p['name'].lower(): p['version'] for p in json.loads(seen.stdout)}
    assert versions['torch'].split('+')[0] == OTHER_TORCH  # the venv's own, not the linked one
    assert 'mmcv' in versions and 'mmdet' in versions  # a user environment with OpenMMLab in it

    report = tmp_path / 'report.json'
    run = subprocess.run(
        [python, '-m', 'pip', 'install', '--dry-run', '--quiet', '--report', str(report),
         '--no-index', '--no-build-isolation', str(REPO)],
        capture_output=True, text=True, timeout=600, env=_pip_env())
    assert run.returncode == 0, run.stdout + run.stderr
    plan = {item['metadata']['name'].lower(): item['metadata']['version']
            for item in json.loads(report.read_text())['install']}
    assert plan.get('metaformer-dense') == metaformer_dense.__version__, plan  # the one version
    assert 'torch' not in plan and 'torchvision' not in plan and 'mmcv' not in plan, plan
    assert set(plan) == {'metaformer-dense'}, plan  # everything else the user has is in range
