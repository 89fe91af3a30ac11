"""tools/setup_env.sh's mmcv build branch, run for real on a stand-in sdist.

The test suite otherwise only ever sees a machine whose mmcv wheel is cached, so a broken build
branch (as a relative ``VENV`` once broke every cold setup) would pass unseen. Here the real
script takes a tiny pure-Python package named mmcv, whose setup.py carries the same
``'-std=c++17'`` flag as mmcv's, through no cached wheel -> local sdist -> patch -> build ->
cache -> install, with relative VENV / cache / sdist paths and from working directories other
than the repository; then a second venv must be served from the cache.

The fresh venvs see the test interpreter's packages (pip, setuptools, torch, ...) through a
folder of links that leaves mmcv out, so the real mmcv cannot satisfy the script by accident.
"""
import os
import site
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = REPO / 'tools' / 'setup_env.sh'
MMCV_VERSION = next(line.split('==')[1].split()[0] for line in
                    (REPO / 'requirements' / 'constraints.txt').read_text().splitlines()
                    if line.startswith('mmcv=='))

STAND_IN_SETUP = '''
from setuptools import setup

# mmcv's own setup.py picks the C++ standard for its extensions like this:
extra_compile_args = {'cxx': ['-std=c++17']}

# The stand-in has no extension; it records the flag it was built with.
with open('mmcv/_build_flags.py', 'w') as f:
    f.write(f"CXX = {extra_compile_args['cxx']!r}\\n")
setup(name='mmcv', version='%s', packages=['mmcv', 'mmcv.ops'])
'''


def _stand_in_sdist(folder: Path) -> Path:
    src = folder / f'mmcv-{MMCV_VERSION}'
    (src / 'mmcv' / 'ops').mkdir(parents=True)
    (src / 'setup.py').write_text(STAND_IN_SETUP % MMCV_VERSION)
    (src / 'mmcv' / '__init__.py').write_text(f"__version__ = '{MMCV_VERSION}'\n")
    (src / 'mmcv' / 'ops' / '__init__.py').write_text('')
    sdist = folder / f'mmcv-{MMCV_VERSION}.tar.gz'
    with tarfile.open(sdist, 'w:gz') as tar:
        tar.add(src, arcname=src.name)
    return sdist


def _deps_without_mmcv(folder: Path) -> Path:
    """Links to every package of the test interpreter except mmcv and this project."""
    folder.mkdir()
    for site_dir in site.getsitepackages():
        for entry in Path(site_dir).iterdir():
            name = entry.name.lower()
            if name.startswith(('mmcv', '__editable__', 'metaformer')) or name.endswith('.pth'):
                continue
            if not (folder / entry.name).exists():
                (folder / entry.name).symlink_to(entry)
    return folder


def _make_venv(cwd: Path, rel: str, deps: Path) -> Path:
    venv = (cwd / rel).resolve()
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
    purelib = sysconfig.get_path('purelib', vars={'base': str(venv), 'platbase': str(venv)})
    Path(purelib, '_test_deps.pth').write_text(f'{deps}\n')
    return venv


def _run_setup(cwd: Path, venv: str, cache: str, sdist: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, VENV=venv, MMCV_WHEEL_CACHE=cache, MMCV_SDIST=sdist,
               PIP_NO_INDEX='1', PIP_DISABLE_PIP_VERSION_CHECK='1', MAX_JOBS='1')
    for var in ('VIRTUAL_ENV', 'PYTHONPATH', 'FORCE_CUDA'):
        env.pop(var, None)
    return subprocess.run(['bash', str(SCRIPT), '--mmcv-only'], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _installed(venv: Path) -> str:
    probe = ('import os, mmcv, mmcv.ops, mmcv._build_flags as f; '
             'print(os.path.realpath(mmcv.__file__), mmcv.__version__, f.CXX)')
    out = subprocess.run([str(venv / 'bin' / 'python'), '-c', probe], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason='needs to run inside a venv')
def test_cold_build_with_relative_paths_then_cached(tmp_path):
    work = tmp_path / 'work'
    (work / 'sub').mkdir(parents=True)
    _stand_in_sdist(work)
    deps = _deps_without_mmcv(tmp_path / 'deps')

    # Cold: relative VENV, cache and sdist, run from a folder that is not the repository.
    venv_a = _make_venv(work, 'venv_a', deps)
    first = _run_setup(work, 'venv_a', 'cache', f'mmcv-{MMCV_VERSION}.tar.gz')
    log = first.stdout + first.stderr
    assert first.returncode == 0, log
    assert 'no cached mmcv wheel' in log and 'mmcv built in' in log, log
    wheels = list((work / 'cache').glob(f'*/mmcv-{MMCV_VERSION}-*.whl'))
    assert len(wheels) == 1, log  # cached where MMCV_WHEEL_CACHE said, relative to the caller
    where, version, flags = _installed(venv_a).split(' ', 2)
    assert where.startswith(str(venv_a) + os.sep) and version == MMCV_VERSION
    assert flags == "['-std=c++20']"  # the C++ standard patch was applied before the build

    # A second venv, given as ../venv_b from a subfolder: served from the cache, no build.
    venv_b = _make_venv(work / 'sub', '../venv_b', deps)
    second = _run_setup(work / 'sub', '../venv_b', '../cache', '/nonexistent/never-read.tar.gz')
    log = second.stdout + second.stderr
    assert second.returncode == 0, log
    assert 'using cached mmcv wheel' in log and 'building' not in log, log
    assert _installed(venv_b).startswith(str(venv_b) + os.sep)

    # Installed already: nothing to do.
    third = _run_setup(work, 'venv_b', 'cache', 'unused.tar.gz')
    assert third.returncode == 0 and 'already installed' in third.stdout, third.stdout + third.stderr


def test_bad_sdist_path_is_named(tmp_path):
    deps = _deps_without_mmcv(tmp_path / 'deps')
    _make_venv(tmp_path, 'venv', deps)
    run = _run_setup(tmp_path, 'venv', 'cache', 'missing/mmcv.tar.gz')
    assert run.returncode != 0
    assert f'MMCV_SDIST={tmp_path}/missing/mmcv.tar.gz is not a file' in run.stderr, run.stderr
