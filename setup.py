"""Install the MetaFormer dense-prediction toolkit.

The dependencies are declared once, in requirements/: runtime.txt and mminstall.txt (mmcv) hold
the version ranges this code supports, each bound with its reason, tests.txt and tools.txt the
extras; constraints.txt is the exact lock that tools/setup_env.sh (``make setup``) installs
against. So ``pip install .`` into an environment with its own torch, mmcv and mmdet keeps them
where they are in range. mmcv publishes no wheels for current torch: install it first
(tools/setup_env.sh builds and caches it; see requirements/mminstall.txt).

Like OpenMMLab's own packages, the wheel carries ``metaformer_dense/.mim/``: the configs, the
tools and ``model-index.yml`` with its metafiles, which is where ``mim search`` / ``mim train``
look (docs/install.md). The version is read from metaformer_dense/version.py without importing
the package.
"""
import ast
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
#: What ``metaformer_dense/.mim/`` carries, relative to the repository root.
MIM_FILES = ('configs', 'tools', 'model-index.yml')


def requirements(name: str) -> list:
    """The requirement lines of ``requirements/<name>``, without comments."""
    with open(os.path.join(HERE, 'requirements', name), encoding='utf-8') as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return [line for line in lines if line and not line.startswith('-')]


def version() -> str:
    """``__version__`` of metaformer_dense/version.py, read as text (importing needs torch)."""
    path = os.path.join(HERE, 'metaformer_dense', 'version.py')
    with open(path, encoding='utf-8') as f:
        for node in ast.parse(f.read()).body:
            if (isinstance(node, ast.Assign)
                    and any(getattr(t, 'id', None) == '__version__' for t in node.targets)):
                return ast.literal_eval(node.value)
    raise RuntimeError(f'{path} assigns no __version__')


def readme() -> str:
    """The README, as the package's long description."""
    path = os.path.join(HERE, 'README.md')
    return open(path, encoding='utf-8').read() if os.path.exists(path) else ''


class BuildPyWithMim(build_py):
    """build_py that also copies the configs, tools and model index into ``metaformer_dense/.mim``.

    An editable install maps the packages onto the source tree, where the files are at the
    repository root already, so it copies nothing.
    """

    def run(self) -> None:
        super().run()
        if getattr(self, 'editable_mode', False):
            return
        target = os.path.join(self.build_lib, 'metaformer_dense', '.mim')
        for name in MIM_FILES:
            src, dst = os.path.join(HERE, name), os.path.join(target, name)
            if os.path.isdir(src):
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
            elif os.path.isfile(src):
                os.makedirs(target, exist_ok=True)
                shutil.copyfile(src, dst)
            else:
                raise FileNotFoundError(f'{src} is missing: the wheel\'s .mim/ needs it')


setup(
    name='metaformer-dense',
    version=version(),
    description='PoolFormer / MetaFormer backbones for mmdet 3.x and mmseg 1.x',
    long_description=readme(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    license_files=['LICENSE'],
    python_requires='>=3.10',
    packages=find_packages(include=['metaformer_dense*', 'metaformer_runner*', 'mmdet_plugin*',
                                    'mmseg_plugin*']),
    cmdclass={'build_py': BuildPyWithMim},
    install_requires=requirements('runtime.txt') + requirements('mminstall.txt'),
    extras_require={
        'tests': requirements('tests.txt'),
        # mmdet's / mmseg's own tools and mim (docs/install.md)
        'tools': requirements('tools.txt'),
        # tools/export_onnx.py: the ONNX packages the export tests pin
        'export': [r for r in requirements('tests.txt') if r.startswith('onnx')],
    },
)
