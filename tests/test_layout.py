"""The package layout stays as the README's "Where things are" describes it.

``metaformer_dense`` holds the model and its weights only: it imports neither mmdet, mmseg, the
plugins nor the runner glue, and names no plugin, so that each plugin can be used without the
other library and runner code cannot creep back into the core. No source file grows past what a
reader takes in at once.
"""
import ast

import pytest

from conftest import REPO

CORE = REPO / 'metaformer_dense'
#: Top-level packages the core may not import.
FORBIDDEN = {'mmdet', 'mmseg', 'mmdet_plugin', 'mmseg_plugin', 'metaformer_runner', 'mmpretrain'}
MAX_LINES = 400
SOURCE_DIRS = ('metaformer_dense', 'metaformer_runner', 'mmdet_plugin', 'mmseg_plugin', 'tools',
               'demo', 'benchmarks', 'configs')


def imported_modules(tree: ast.AST) -> set:
    """Every module an ``import`` or ``from ... import`` in ``tree`` names (absolute ones)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def string_constants(tree: ast.AST) -> set:
    """Every string literal in ``tree`` (``importlib.import_module('mmdet_plugin')`` and the like)."""
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


@pytest.mark.parametrize('path', sorted(CORE.glob('*.py')), ids=lambda p: p.name)
def test_core_imports_no_framework_plugin_or_runner(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    imported = {name for name in imported_modules(tree) if name.split('.')[0] in FORBIDDEN}
    assert not imported, f'{path.name} imports {sorted(imported)}'
    named = {s for s in string_constants(tree) if s.split('.')[0] in FORBIDDEN}
    assert not named, f'{path.name} names {sorted(named)} (a plugin or runner module by string)'


def test_the_scan_sees_imports():
    """The scan above is not vacuous: it finds what a runner-style module would import."""
    tree = ast.parse('import mmdet.apis\nfrom metaformer_runner import load_config\n'
                     "importlib.import_module('mmseg_plugin')\n")
    assert {'mmdet.apis', 'metaformer_runner'} <= imported_modules(tree)
    assert 'mmseg_plugin' in string_constants(tree)


def source_files() -> list:
    return sorted(p for d in SOURCE_DIRS for p in (REPO / d).rglob('*.py')) + sorted(
        (REPO / 'tests').glob('*.py'))


@pytest.mark.parametrize('path', source_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_source_file_over_400_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, (f'{path.relative_to(REPO)} has {lines} lines (limit {MAX_LINES}): '
                                'split it by job')
