"""mmdet's and mmseg's own tools on the toolkit's configs, as docs/openmmlab_tools.md runs them.

The tools are the copies every mmdet / mmseg install carries (``site-packages/<lib>/.mim/tools``,
what ``mim run`` runs), started as the page starts them, on the tiny configs of ``tests/configs``
(detection) and on the 5-class folder of docs/custom_dataset.md (mmseg's confusion matrix, which
cannot draw ADE20K's 150 classes). Where a tool cannot run here, the test checks the reason the
page gives.
"""
from __future__ import annotations

import importlib.util
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CPU_ENV, DET_CFG, REPO, run_script
from user_datasets import SEG_SMALL, user_tree, write_seg_folder

SEG_CFG = REPO / 'tests/configs/semantic_fpn_poolformer_s12_tools.py'
PAGE = REPO / 'docs' / 'openmmlab_tools.md'


def tool(lib: str, relpath: str) -> Path:
    """``<lib>/.mim/tools/<relpath>`` of the installed mmdet / mmseg."""
    path = Path(importlib.util.find_spec(lib).origin).parent / '.mim' / 'tools' / relpath
    assert path.exists(), f'{lib} carries no {relpath} (a {lib} install without its .mim tools?)'
    return path


def outputs(proc) -> str:
    return proc.stdout + proc.stderr


@pytest.fixture(scope='module')
def det_run(tmp_path_factory) -> Path:
    """mmdet's tools/train.py: the tiny RetinaNet for 2 iterations, evaluated at the end."""
    work = tmp_path_factory.mktemp('mmdet_train')
    run_script(tool('mmdet', 'train.py'), DET_CFG, '--work-dir', work, '--cfg-options',
               'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
               'model.test_cfg.score_thr=0.0')
    return work


@pytest.fixture(scope='module')
def det_results(det_run) -> Path:
    """mmdet's tools/test.py on that checkpoint, its predictions pickled by --out."""
    out = det_run / 'results.pkl'
    proc = run_script(tool('mmdet', 'test.py'), DET_CFG, det_run / 'iter_2.pth',
                      '--work-dir', det_run / 'test', '--out', out,
                      '--cfg-options', 'model.test_cfg.score_thr=0.0')
    assert 'coco/bbox_mAP' in outputs(proc)
    return out


def test_mmdet_train(det_run):
    assert (det_run / 'iter_2.pth').exists()
    log = '\n'.join(p.read_text() for p in det_run.glob('*/*.log'))
    assert 'Iter(train) [2/2]' in log and 'coco/bbox_mAP' in log


def test_mmdet_test_writes_the_predictions_pickle(det_results):
    with open(det_results, 'rb') as f:
        predictions = pickle.load(f)  # a file the test itself just wrote
    assert len(predictions) == 2 and 'pred_instances' in predictions[0]


def test_mmdet_confusion_matrix(det_results, tmp_path):
    run_script(tool('mmdet', 'analysis_tools/confusion_matrix.py'), DET_CFG, det_results,
               tmp_path, '--score-thr', '0')
    assert (tmp_path / 'confusion_matrix.png').stat().st_size > 0


def test_mmdet_analyze_logs_plot_curve(det_run, tmp_path):
    (log,) = [p for p in det_run.glob('*/vis_data/*.json') if p.name != 'scalars.json']
    run_script(tool('mmdet', 'analysis_tools/analyze_logs.py'), 'plot_curve', log,
               '--keys', 'loss', 'loss_cls', '--out', tmp_path / 'loss.png')
    assert (tmp_path / 'loss.png').stat().st_size > 0


def test_mmdet_get_flops():
    proc = run_script(tool('mmdet', 'analysis_tools/get_flops.py'), DET_CFG,
                      '--num-images', '1')
    text = outputs(proc)
    assert 'Flops:' in text and 'Params:' in text, text[-2000:]


def test_mmdet_browse_dataset(tmp_path):
    run_script(tool('mmdet', 'analysis_tools/browse_dataset.py'), DET_CFG, '--not-show',
               '--output-dir', tmp_path)
    assert len(list(tmp_path.glob('*.jpg'))) == 2  # the config's 2 training images


def test_mmdet_benchmark_dataloader():
    proc = run_script(tool('mmdet', 'analysis_tools/benchmark.py'), DET_CFG,
                      '--task', 'dataloader', '--dataset-type', 'train',
                      '--max-iter', '4', '--num-warmup', '1', '--log-interval', '1')
    assert 'Overall fps' in outputs(proc), outputs(proc)[-2000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason='mmdet times inference on CUDA only')
def test_mmdet_benchmark_inference_on_cuda(det_run):
    env = {k: v for k, v in CPU_ENV.items() if k != 'CUDA_VISIBLE_DEVICES'}
    proc = run_script(tool('mmdet', 'analysis_tools/benchmark.py'), DET_CFG,
                      '--checkpoint', det_run / 'iter_2.pth', '--task', 'inference',
                      '--max-iter', '4', '--num-warmup', '1', '--log-interval', '1', env=env)
    assert 'Overall fps' in outputs(proc)


def test_mmdet_benchmark_inference_needs_cuda_as_the_page_says():
    src = Path(importlib.util.find_spec('mmdet.utils.benchmark').origin).read_text()
    assert 'model.cuda()' in src
    assert 'mmdet times inference on CUDA only' in PAGE.read_text()


@pytest.fixture(scope='module')
def seg_run(tmp_path_factory) -> Path:
    """mmseg's tools/train.py: the tiny Semantic FPN of tests/configs, 2 iterations."""
    work = tmp_path_factory.mktemp('mmseg_train')
    run_script(tool('mmseg', 'train.py'), SEG_CFG, '--work-dir', work)
    return work


def test_mmseg_train(seg_run):
    assert (seg_run / 'iter_2.pth').exists()
    assert 'mIoU' in '\n'.join(p.read_text() for p in seg_run.glob('*/*.log'))


def test_mmseg_analyze_logs(seg_run, tmp_path):
    (log,) = [p for p in seg_run.glob('*/vis_data/*.json') if p.name != 'scalars.json']
    run_script(tool('mmseg', 'analysis_tools/analyze_logs.py'), log, '--keys', 'loss', 'mIoU',
               '--out', tmp_path / 'curves.png')
    assert (tmp_path / 'curves.png').stat().st_size > 0


def test_mmseg_browse_dataset(tmp_path):
    run_script(tool('mmseg', 'analysis_tools/browse_dataset.py'), SEG_CFG, '--not-show',
               '--output-dir', tmp_path)
    assert len(list(tmp_path.glob('*.jpg'))) == 2


def test_the_seg_visualizer_draws_what_mmseg_s_visualizer_refuses():
    """The configs' visualizer is what makes browse_dataset.py run (mmseg 1.2.2's refuses)."""
    import cv2
    from mmengine.structures import PixelData
    from mmseg.visualization import SegLocalVisualizer

    from mmseg_plugin import ContiguousSegLocalVisualizer
    chw = torch.randint(0, 255, (3, 32, 48), dtype=torch.uint8)
    image = chw.permute(1, 2, 0).numpy()[..., [2, 1, 0]]  # what browse_dataset.py hands over
    labels = PixelData(data=torch.randint(0, 3, (1, 32, 48)))
    meta = dict(classes=('a', 'b', 'c'), palette=[[255, 0, 0], [0, 255, 0], [0, 0, 255]])

    def draw(cls):
        vis = cls(name=f'vis_{cls.__name__}', alpha=0.5)
        return vis._draw_sem_seg(image, labels, meta['classes'], meta['palette'])

    with pytest.raises(cv2.error):
        draw(SegLocalVisualizer)
    drawn = draw(ContiguousSegLocalVisualizer)
    contiguous = np.ascontiguousarray(image)
    reference = SegLocalVisualizer(name='vis_reference', alpha=0.5)._draw_sem_seg(
        contiguous, labels, meta['classes'], meta['palette'])
    np.testing.assert_array_equal(drawn, reference)


def page_block(after: str) -> str:
    """The first fenced block of the page that follows the line ``after``."""
    text = PAGE.read_text()
    match = re.search(re.escape(after) + r'\n\n```\w*\n(.*?)```', text, re.S)
    assert match, f'{PAGE.name} shows no block after {after!r}'
    return match.group(1)


def test_mmseg_train_test_and_confusion_matrix_on_a_dataset_class_of_five(tmp_path):
    """The page's dataset class and config on docs/custom_dataset.md's segmentation config."""
    write_seg_folder(tmp_path / 'data' / 'my_seg')
    user_tree(tmp_path, 'my_semantic_fpn_poolformer_s12.py')
    (tmp_path / 'my_dataset.py').write_text(page_block('`my_dataset.py`:'))
    config = tmp_path / 'configs' / 'my_semantic_fpn_poolformer_s12_cm.py'
    config.write_text(page_block('`configs/my_semantic_fpn_poolformer_s12_cm.py`:'))
    env = dict(CPU_ENV, PYTHONPATH=str(tmp_path))  # my_dataset.py importable, as the page says
    work, preds, plots = tmp_path / 'work', tmp_path / 'preds', tmp_path / 'plots'
    run_script(tool('mmseg', 'train.py'), config, '--work-dir', work, '--cfg-options',
               *SEG_SMALL, cwd=tmp_path, env=env)
    run_script(tool('mmseg', 'test.py'), config, work / 'iter_2.pth', '--work-dir',
               work / 'test', '--out', preds, '--cfg-options', *SEG_SMALL, cwd=tmp_path, env=env)
    assert len(list(preds.glob('*.png'))) == 2
    run_script(tool('mmseg', 'analysis_tools/confusion_matrix.py'), config, preds, plots,
               '--cfg-options', *SEG_SMALL, cwd=tmp_path, env=env)
    assert (plots / 'confusion_matrix.png').stat().st_size > 0


def test_mmseg_confusion_matrix_needs_classes_on_the_dataset_class_as_the_page_says(tmp_path):
    """On BaseSegDataset with the classes in the config, mmseg's tool finds none (KeyError)."""
    write_seg_folder(tmp_path / 'data' / 'my_seg')
    config = user_tree(tmp_path, 'my_semantic_fpn_poolformer_s12.py')
    preds = tmp_path / 'preds'  # predictions as test.py --out writes them: the val label maps
    shutil.copytree(tmp_path / 'data' / 'my_seg' / 'labels' / 'val', preds)
    proc = run_script(tool('mmseg', 'analysis_tools/confusion_matrix.py'), config, preds,
                      tmp_path / 'plots', '--cfg-options', *SEG_SMALL, cwd=tmp_path, ok=False)
    assert proc.returncode != 0 and "KeyError: 'classes'" in outputs(proc)
    assert "KeyError: 'classes'" in PAGE.read_text()


def test_mmseg_get_flops_fails_upstream_as_the_page_says():
    """mmseg 1.2.2's get_flops.py passes mmengine both an input shape and inputs.

    When this fails, mmseg has fixed its tool: drop the workaround from docs/openmmlab_tools.md.
    The command the page gives instead is tested in test_report.py.
    """
    proc = run_script(tool('mmseg', 'analysis_tools/get_flops.py'), SEG_CFG, '--shape', '64',
                      '64', ok=False)
    assert proc.returncode != 0
    assert '"input_shape" and "inputs" cannot be both set' in outputs(proc)
    assert 'python -m benchmarks.report configs/semantic_fpn_poolformer_s12.py' in PAGE.read_text()


def test_mmseg_benchmark_needs_205_test_images_as_the_page_says():
    src = tool('mmseg', 'analysis_tools/benchmark.py').read_text()
    assert 'total_iters = 200' in src and 'num_warmup = 5' in src
    n_val = len(list((REPO / 'data/tiny_ade20k/images/validation').iterdir()))
    assert n_val < 205 and 'python -m benchmarks.speed' in PAGE.read_text()


def test_the_page_runs_every_tool_from_the_libraries_own_copies():
    text = PAGE.read_text()
    for lib in ('mmdet', 'mmseg'):
        assert f'import {lib}, os' in text  # the page's $MMDET / $MMSEG: <lib>/.mim/tools
        for name in ('train', 'test', 'analysis_tools/get_flops', 'analysis_tools/benchmark',
                     'analysis_tools/browse_dataset', 'analysis_tools/analyze_logs',
                     'analysis_tools/confusion_matrix'):
            command = f'python ${lib.upper()}/{name}.py '
            assert command in text, f'{PAGE.name} shows no command {command!r}'
