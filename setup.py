"""Install the MetaFormer dense-prediction toolkit.

mmcv 2.1.0 publishes no wheels for current torch. ``pip install -e .`` does not build it for you:
run ``tools/setup_env.sh`` (or ``make test``), which compiles it once with the C++ standard fix
and caches the wheel. See README.md.
"""
from setuptools import find_packages, setup

setup(
    name='metaformer-dense',
    version='0.1.0',
    description='PoolFormer / MetaFormer backbones for mmdet 3.x and mmseg 1.x',
    long_description=open('README.md', encoding='utf-8').read() if __import__('os').path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=find_packages(include=['metaformer_dense*', 'metaformer_runner*', 'mmdet_plugin*',
                                    'mmseg_plugin*']),
    install_requires=[
        'torch>=2.6',
        'timm>=1.0.9',
        'mmengine==0.10.7',
        # mmdet 3.3 / mmseg 1.2 assert mmcv<2.2. No wheel exists for torch 2.14: build it with
        # tools/setup_env.sh (it patches -std=c++17 -> c++20 and caches the wheel).
        'mmcv==2.1.0',
        'safetensors',
    ],
    extras_require={
        'mmdet': ['mmdet==3.3.0', 'pycocotools'],
        'mmseg': ['mmsegmentation==1.2.2', 'ftfy', 'regex'],
        'tests': ['pytest', 'mmpretrain==1.2.0', 'onnx==1.23.1', 'onnxruntime==1.30.0',
                  'onnxscript==0.7.2'],
        # tools/export_onnx.py
        'export': ['onnx==1.23.1', 'onnxruntime==1.30.0', 'onnxscript==0.7.2'],
    },
)
