"""The package layout stays as the README's "Where things are" describes it.

``metaformer_dense`` holds the model and its weights only: it imports neither mmdet, mmseg, the
plugins nor the runner glue, and names no plugin, so that each plugin can be used without the
other library and runner code cannot creep back into the core. Its modules import one another
without a circle, and no module anywhere imports another module's private (``_name``) names:
a piece two modules need is its own module below both.
"""
import ast
import re
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

from conftest import REPO

CORE = REPO / 'metaformer_dense'
#: Top-level packages the core may not import.
FORBIDDEN = {'mmdet', 'mmseg', 'mmdet_plugin', 'mmseg_plugin', 'metaformer_runner', 'mmpretrain'}
#: Packages of this repository whose modules' private names stay private.
OWN_PACKAGES = ('metaformer_dense', 'metaformer_runner', 'mmdet_plugin', 'mmseg_plugin',
                'benchmarks')
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


def module_name(path: Path) -> str:
    """``metaformer_dense/fast_path.py`` -> ``metaformer_dense.fast_path`` (a package's
    ``__init__.py`` is the package)."""
    parts = list(path.relative_to(REPO).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def imports_of(tree: ast.AST, module: str, is_package: bool = False) -> List[Tuple[str, str]]:
    """``(module, name)`` for every name an import in ``tree`` takes from a module; ``name`` is
    '' for ``import x.y``. Relative imports are resolved against ``module``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, '') for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                package = module.split('.') if is_package else module.split('.')[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = '.'.join(package + ([base] if base else []))
            found.extend((base, alias.name) for alias in node.names)
    return found


def private_imports(tree: ast.AST, module: str, is_package: bool = False) -> List[str]:
    """The ``from m import _name`` imports of another module's private names (``from . import
    _module`` of a private module and dunders such as ``__version__`` are not private names)."""
    bad = []
    for source, name in imports_of(tree, module, is_package):
        if not source.startswith(OWN_PACKAGES) or source == module:
            continue
        if name.startswith('_') and not name.startswith('__'):
            bad.append(f'{source}.{name}')
    return bad


def test_the_private_name_scan_sees_imports():
    tree = ast.parse('from .fast_path import _matrix, stage_forward\n'
                     'from metaformer_dense.checkpoint import _globals as g\n'
                     'from timm.layers import _assert\nfrom . import __version__\n')
    assert private_imports(tree, 'metaformer_dense.lean_training') == [
        'metaformer_dense.fast_path._matrix', 'metaformer_dense.checkpoint._globals']


@pytest.mark.parametrize('path', source_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_another_modules_private_names(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = private_imports(tree, module_name(path), path.name == '__init__.py')
    assert not bad, (f'{path.relative_to(REPO)} imports private names {bad}: make them public, '
                     'or move the piece both modules need into its own module below both')


def core_import_graph() -> Dict[str, Set[str]]:
    """``{module: core modules it imports}`` over ``metaformer_dense/`` (lazy imports inside
    functions count: they are circles too)."""
    graph = {}
    for path in sorted(CORE.glob('*.py')):
        name = module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = set()
        for source, imported in imports_of(tree, name, path.name == '__init__.py'):
            if source == 'metaformer_dense' and imported:  # from . import fast_path
                candidate = f'metaformer_dense.{imported}'
                targets.add(candidate if (CORE / f'{imported}.py').exists() else source)
            elif source.startswith('metaformer_dense'):
                targets.add(source)
        targets.discard(name)
        graph[name] = targets
    return graph


def find_circle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import circle of ``graph`` (``[a, b, a]``), or [] when there is none. The package
    ``__init__`` is left out: importing a submodule runs it first, so every module would close
    a circle through it otherwise."""
    graph = {m: {t for t in ts if t != 'metaformer_dense'} for m, ts in graph.items()
             if m != 'metaformer_dense'}
    done, path = set(), []

    def visit(node: str) -> List[str]:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return []
        path.append(node)
        for target in sorted(graph.get(node, ())):
            circle = visit(target)
            if circle:
                return circle
        path.pop()
        done.add(node)
        return []

    for start in sorted(graph):
        circle = visit(start)
        if circle:
            return circle
    return []


def test_the_circle_scan_sees_circles():
    assert find_circle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']
    assert find_circle({'a': {'b'}, 'b': set(), 'metaformer_dense': {'a'}, 'c': {'a', 'b'}}) == []
    graph = core_import_graph()
    assert 'metaformer_dense.checkpoint' in graph['metaformer_dense.backbone']
    assert 'metaformer_dense.fast_path' in graph['metaformer_dense.backbone']  # from . import x


def test_core_has_no_import_circle():
    circle = find_circle(core_import_graph())
    assert not circle, f'import circle in metaformer_dense: {" -> ".join(circle)}'


def test_core_submodules_do_not_import_the_package():
    # `from metaformer_dense import X` inside the core would import upward, through __init__
    graph = core_import_graph()
    upward = sorted(m for m, ts in graph.items() if m != 'metaformer_dense' and 'metaformer_dense' in ts)
    assert not upward, f'{upward} import the package metaformer_dense itself; import the module'


def test_only_conftest_locates_the_repository():
    # One REPO (tests/conftest.py): a test file that finds the repository its own way can drift
    # from it, e.g. when tests are moved into a subfolder.
    own = [p.name for p in sorted((REPO / 'tests').glob('test_*.py'))
           if re.search(r'\(\s*__file__\s*\)', p.read_text())]  # Path(...) / dirname(...)
    assert not own, f'{own} locate the repository from __file__; use conftest.REPO'



def test_nothing_imports_a_study_and_no_benchmark_edits_sys_path():
    # benchmarks/studies/ are instruments behind the defaults: the toolkit and the user tools
    # stand without them. Every benchmark runs as `python -m benchmarks.<tool>` from the root.
    for path in source_files():
        rel = path.relative_to(REPO)
        if rel.parts[0] == 'tests' or rel.parts[:2] == ('benchmarks', 'studies'):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        studies = [f'{m}.{n}' for m, n in imports_of(tree, module_name(path),
                                                     path.name == '__init__.py')
                   if f'{m}.{n}'.startswith('benchmarks.studies')]
        assert not studies, f'{rel} imports {studies}'
    for path in sorted((REPO / 'benchmarks').rglob('*.py')):
        assert 'sys.path.insert' not in path.read_text(), (
            f'{path.relative_to(REPO)} edits sys.path; run it as python -m benchmarks.<name>')
