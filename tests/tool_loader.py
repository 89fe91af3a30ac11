"""Import a script under tools/ as a module (the tools are scripts, not a package)."""
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[1] / 'tools'


def load_tool(relpath: str) -> ModuleType:
    """Load ``tools/<relpath>.py``, e.g. ``'demo'`` or ``'analysis/benchmark_report'``."""
    name = 'tool_' + relpath.replace('/', '_')
    spec = importlib.util.spec_from_file_location(name, TOOLS / f'{relpath}.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    spec.loader.exec_module(module)
    return module
