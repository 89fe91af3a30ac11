"""Helpers the test files share.

The scripts under ``tools/`` and ``demo/`` are scripts, not packages: :func:`load_script`
imports one as a module so that tests can call its functions in-process.
"""
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(relpath: str) -> ModuleType:
    """Load ``<repo>/<relpath>.py`` as a module, e.g. ``'demo/image_demo'``."""
    name = 'script_' + relpath.replace('/', '_')
    spec = importlib.util.spec_from_file_location(name, REPO / f'{relpath}.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    spec.loader.exec_module(module)
    return module
