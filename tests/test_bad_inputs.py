"""Bad input other than checkpoints, end to end: wrong configs, odd images, degenerate
annotations, and training killed mid-epoch (the checkpoints: tests/test_bad_checkpoints.py).

Configs, annotations and the kill/resume run through tools/train.py in subprocesses, images
through demo/image_demo.py in-process. Models are the tiny test configs (96 px images, one or
two images, a few iterations).
"""
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import CPU_ENV as ENV
from conftest import DET_CFG, REPO, demo_error, load_script
from conftest import run_script as run

DEMO_DET_CFG = REPO / 'configs/demo/retinanet_poolformer_s12_tiny.py'
COCO = REPO / 'data/tiny_coco'
demo_tool = load_script('demo/image_demo')


# ----------------------------------------------------------------------------- configs
CONFIG_ERRORS = {
    'unknown_argument': (['model.backbone.depth=50'], "unexpected keyword argument 'depth'"),
    'out_indices': (['model.backbone.out_indices=[1,2,4]'],
                    'out_indices must be distinct increasing stage indices in 0..3, got (1, 2, 4)'),
    'frozen_stages': (['model.backbone.frozen_stages=5'],
                      'frozen_stages must be an int in -1..4'),
    'arch': (['model.backbone.arch=poolformer_s13'], "unknown MetaFormer arch 'poolformer_s13'"),
    'data_root': (['train_dataloader.dataset.data_root=/nonexistent/coco/'],
                  "train_dataloader.dataset.data_root = '/nonexistent/coco/': no such directory"),
}


@pytest.mark.parametrize('case', CONFIG_ERRORS)
def test_train_rejects_bad_config(case, tmp_path):
    options, message = CONFIG_ERRORS[case]
    proc = run('tools/train.py', DET_CFG, '--work-dir', tmp_path, '--cfg-options', *options,
               ok=False)
    assert proc.returncode != 0
    if case == 'data_root':  # found before anything is built: a message, no stack trace
        assert message in proc.stderr and 'Traceback' not in proc.stderr
    else:  # raised while the Runner builds the model: the last line says what is wrong
        assert message in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
    assert not list(tmp_path.glob('*.pth'))


@pytest.mark.skipif(torch.cuda.is_available(), reason='refused on CPU-only machines only')
@pytest.mark.parametrize('how', ['flag', 'config'])
def test_train_refuses_mixed_precision_on_cpu_and_says_why(how, tmp_path):
    import argparse

    from metaformer_runner import load_config
    train = load_script('tools/train')
    cfg = load_config(str(REPO / 'configs/demo/mask_rcnn_poolformer_s12_tiny.py'))
    if how == 'config':
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
    args = argparse.Namespace(config='mask_rcnn.py', work_dir=str(tmp_path), launcher='none',
                              amp=how == 'flag', auto_scale_lr=False, resume=None)
    with pytest.raises(ValueError) as err:
        train.apply_args(cfg, args)
    message = str(err.value)
    assert message.startswith('--amp: ' if how == 'flag' else 'optim_wrapper.type=AmpOptimWrapper')
    assert "mmcv's CPU NMS takes float32 boxes only" in message and 'Train in float32' in message


# ----------------------------------------------------------------------------- images
def _write_odd_images(folder: Path) -> dict:
    rng = np.random.default_rng(0)
    photo = cv2.imread(str(COCO / 'val/000001.jpg'))
    images = {
        'gray.png': cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY),
        'rgba.png': np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)]),
        'deep16.png': photo.astype(np.uint16) * 257,
        'tiny.png': rng.integers(0, 255, (12, 20, 3), dtype=np.uint8),
        'wide.png': rng.integers(0, 255, (8, 2000, 3), dtype=np.uint8),
        'tall.png': rng.integers(0, 255, (1200, 10, 3), dtype=np.uint8),
    }
    for name, img in images.items():
        assert cv2.imwrite(str(folder / name), img)
    return {name: img.shape[:2] for name, img in images.items()}


def test_demo_handles_odd_images(det_weights, tmp_path):
    folder = tmp_path / 'imgs'
    folder.mkdir()
    shapes = _write_odd_images(folder)
    torch.save({'meta': {}, 'state_dict': det_weights}, tmp_path / 'model.pth')
    demo_tool.main([str(folder), str(DET_CFG), str(tmp_path / 'model.pth'),
                    '--out-dir', str(tmp_path / 'vis'), '--score-thr', '0',
                    '--cfg-options', 'model.test_cfg.score_thr=0.0'])
    for name, shape in shapes.items():
        drawn = cv2.imread(str(tmp_path / 'vis' / name), cv2.IMREAD_UNCHANGED)
        assert drawn.shape == (*shape, 3) and drawn.dtype == np.uint8, name
    # 16-bit samples become 8-bit by dropping the low byte, not by clipping
    photo = cv2.imread(str(COCO / 'val/000001.jpg'))
    np.testing.assert_array_equal(demo_tool.read_image(str(folder / 'deep16.png')), photo)


def test_demo_names_a_corrupt_image(det_weights, tmp_path):
    torch.save({'meta': {}, 'state_dict': det_weights}, tmp_path / 'model.pth')
    jpeg = (COCO / 'val/000002.jpg').read_bytes()
    cases = {
        'truncated.jpg': (jpeg[:len(jpeg) // 2], 'is corrupt or truncated'),
        'noise.jpg': (np.random.default_rng(0).bytes(2000), 'is not an image file'),
        'empty.jpg': (b'', 'is an empty file'),
    }
    good = COCO / 'val/000001.jpg'
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        error = demo_error(good, tmp_path / name, DET_CFG, tmp_path / 'model.pth',
                           '--out-dir', tmp_path / 'vis')
        assert f"{str(tmp_path / name)!r}" in error and message in error, error
    assert not (tmp_path / 'vis').exists()  # checked before anything was drawn
    assert 'image not found' in demo_error(tmp_path / 'nope.jpg', DET_CFG, tmp_path / 'model.pth')


def test_train_on_images_without_boxes_and_a_degenerate_box(tmp_path):
    """An image without annotations and one whose only box has zero width train fine."""
    root = tmp_path / 'data'
    (root / 'train').mkdir(parents=True)
    (root / 'annotations').mkdir()
    gray = cv2.cvtColor(cv2.imread(str(COCO / 'train/000001.jpg')), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(root / 'train/empty.jpg'), gray)
    (root / 'train/degenerate.jpg').write_bytes((COCO / 'train/000002.jpg').read_bytes())
    height, width = gray.shape
    coco = json.loads((COCO / 'annotations/instances_train.json').read_text())
    ann = dict(images=[dict(id=1, file_name='empty.jpg', height=height, width=width),
                       dict(id=2, file_name='degenerate.jpg', height=height, width=width)],
               annotations=[dict(id=1, image_id=2, category_id=coco['categories'][0]['id'],
                                 bbox=[30.0, 20.0, 0.0, 40.0], area=0.0, iscrowd=0)],
               categories=coco['categories'])
    (root / 'annotations/train.json').write_text(json.dumps(ann))
    work = tmp_path / 'work'
    run('tools/train.py', DET_CFG, '--work-dir', work, '--cfg-options',
        f'train_dataloader.dataset.data_root={root}/',
        'train_dataloader.dataset.ann_file=annotations/train.json',
        'train_dataloader.dataset.filter_cfg.filter_empty_gt=False',
        'train_dataloader.batch_size=2', 'train_cfg.max_iters=1', 'train_cfg.val_interval=100',
        'default_hooks.checkpoint.interval=1')
    (scalars,) = work.glob('*/vis_data/scalars.json')
    (record,) = [r for r in map(json.loads, scalars.read_text().splitlines()) if 'loss' in r]
    assert record['iter'] == 1 and math.isfinite(record['loss'])
    assert record['loss_bbox'] == 0.0  # no box survived: only the classifier learned
    assert (work / 'iter_1.pth').is_file()


# ----------------------------------------------------------------------------- kill and resume
RESUME_CFG = '''
_base_ = {base!r}
# 96 px, two images, batch 1: two iterations per epoch, three epochs. No random flip, so a
# resumed run sees exactly the data an uninterrupted one does.
img_scale = (96, 96)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='PackDetInputs')
]
train_dataloader = dict(batch_size=1, dataset=dict(indices=2, pipeline=train_pipeline))
max_epochs = 3
train_cfg = dict(max_epochs=max_epochs, val_interval=100)
# lr changes every iteration (warm-up) and halves for the third epoch (a by-epoch step)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=6),
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=max_epochs, milestones=[2], gamma=0.5)
]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=-1))
log_processor = dict(window_size=1)
'''


def _records(work: Path) -> list:
    runs = []
    for path in sorted(work.glob('*/vis_data/scalars.json')):
        runs.append([json.loads(line) for line in path.read_text().splitlines()
                     if '"lr"' in line])
    return runs


def test_sigkill_mid_epoch_resumes_with_the_same_schedule(tmp_path):
    cfg = tmp_path / 'resume_cfg.py'
    cfg.write_text(RESUME_CFG.format(base=str(DEMO_DET_CFG)))
    full, killed = tmp_path / 'full', tmp_path / 'killed'
    uninterrupted = subprocess.Popen(
        [sys.executable, 'tools/train.py', str(cfg), '--work-dir', str(full)], cwd=REPO,
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    proc = subprocess.Popen([sys.executable, 'tools/train.py', str(cfg), '--work-dir',
                             str(killed)], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 500
    while proc.poll() is None and time.time() < deadline:
        logged = {r['iter'] for run in _records(killed) for r in run}
        if (killed / 'epoch_1.pth').exists() and 3 in logged:
            break  # an epoch is saved and the next one is under way
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
    assert uninterrupted.wait(timeout=600) == 0

    # What an interrupted save (or an older run) can leave: a partial temporary file, and a
    # pointer naming a checkpoint that was never completed.
    from metaformer_dense import allow_runner_checkpoints
    allow_runner_checkpoints()
    last_good = Path((killed / 'last_checkpoint').read_text().strip())
    saved_epoch = int(last_good.stem.split('_')[1])
    saved_iter = torch.load(last_good, weights_only=True)['meta']['iter']
    assert saved_iter == 2 * saved_epoch < 6
    nxt = killed / f'epoch_{saved_epoch + 1}.pth'
    Path(f'{nxt}.tmp').write_bytes(last_good.read_bytes()[:100_000])
    (killed / 'last_checkpoint').write_text(str(nxt))

    resumed = run('tools/train.py', cfg, '--work-dir', killed, '--resume')
    assert f'resumed epoch: {saved_epoch}, iter: {saved_iter}' in resumed.stdout + resumed.stderr

    (reference,) = _records(full)
    by_iter = {r['iter']: r for r in reference}
    assert [r['iter'] for r in reference] == [1, 2, 3, 4, 5, 6]
    assert len({r['lr'] for r in reference}) == 6  # every iteration's lr differs
    *_, after = _records(killed)
    assert [r['iter'] for r in after] == list(range(saved_iter + 1, 7))
    for record in after:
        expected = by_iter[record['iter']]
        assert record['epoch'] == expected['epoch']
        assert record['lr'] == pytest.approx(expected['lr'], rel=1e-9)
        # same weights, optimizer state and data: the same loss
        assert record['loss'] == pytest.approx(expected['loss'], rel=1e-3)
    final = torch.load(killed / 'epoch_3.pth', weights_only=True)
    assert final['meta']['iter'] == 6 and final['meta']['epoch'] == 3
    assert (killed / 'last_checkpoint').read_text().strip() == str(killed / 'epoch_3.pth')
