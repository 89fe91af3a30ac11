"""Install the MetaFormer dense-prediction toolkit.

The dependencies are declared once, in requirements/ (runtime.txt, tests.txt; exact versions of
everything in constraints.txt); this file reads them. mmcv publishes no wheels for current torch
and is not listed there: ``pip install -e .`` expects it installed already. Run
``tools/setup_env.sh`` (or ``make test``), which compiles it once with the C++ standard fix, caches
the wheel and installs everything else against the lock. See README.md.
"""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def requirements(name: str) -> list:
    """The requirement lines of ``requirements/<name>.txt``, without comments."""
    with open(os.path.join(HERE, 'requirements', name), encoding='utf-8') as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return [line for line in lines if line and not line.startswith('-')]


def readme() -> str:
    """The README, as the package's long description."""
    path = os.path.join(HERE, 'README.md')
    return open(path, encoding='utf-8').read() if os.path.exists(path) else ''


setup(
    name='metaformer-dense',
    version='0.1.0',
    description='PoolFormer / MetaFormer backbones for mmdet 3.x and mmseg 1.x',
    long_description=readme(),
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=find_packages(include=['metaformer_dense*', 'metaformer_runner*', 'mmdet_plugin*',
                                    'mmseg_plugin*']),
    install_requires=requirements('runtime.txt'),
    extras_require={
        'tests': requirements('tests.txt'),
        # tools/export_onnx.py: the ONNX packages the export tests pin
        'export': [r for r in requirements('tests.txt') if r.startswith('onnx')],
    },
)
