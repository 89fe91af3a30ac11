"""End-to-end tests of tools/train.py, tools/test.py and tools/dist_train.sh, run for real on CPU.

Every tool runs as a subprocess on the tiny configs in tests/configs/ (96 px detection images or
64 px segmentation crops, two images, at most six iterations), so the whole file takes a couple
of minutes on two cores.
"""
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config

from conftest import CPU_ENV as ENV
from conftest import DET_CFG, REPO, load_script
from conftest import run_script as run
from metaformer_dense import allow_runner_checkpoints
from metaformer_runner import (DatasetNotFoundError, check_dataset_paths,
                               find_resumable_checkpoint)

SEG_CFG = REPO / 'tests/configs/semantic_fpn_poolformer_s12_tools.py'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def logged_scalars(work_dir: Path) -> list:
    """Per run (oldest first), the training records of ``<timestamp>/vis_data/scalars.json``."""
    runs = []
    for path in sorted(work_dir.glob('*/vis_data/scalars.json')):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        runs.append([r for r in records if 'lr' in r])
    return runs


def load_checkpoint(path) -> dict:
    """Load a runner checkpoint the safe way, as ``--resume`` does on torch >= 2.6."""
    allow_runner_checkpoints()
    return torch.load(path, map_location='cpu', weights_only=True)


def expected_lrs(cfg_path: Path) -> list:
    """The lr of each iteration per the config's schedule, computed by mmengine itself."""
    from mmengine.optim.scheduler import LinearLR
    cfg = Config.fromfile(str(cfg_path), import_custom_modules=False)
    (sched_cfg,) = cfg.param_scheduler
    assert sched_cfg['type'] == 'LinearLR'
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)],
                                lr=cfg.optim_wrapper.optimizer.lr)
    scheduler = LinearLR(optimizer, **{k: v for k, v in sched_cfg.items() if k != 'type'})
    lrs = []
    for _ in range(cfg.train_cfg.max_iters):
        lrs.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.fixture(scope='module')
def resumed_run(tmp_path_factory):
    """Train the tiny detector, SIGKILL it while it writes its second checkpoint, resume.

    ``max_keep_ckpts=1`` makes the hook delete the first checkpoint around the second save:
    the stock CheckpointHook deletes it *before* writing, so a kill at that moment leaves no
    usable checkpoint; ours renames the complete file into place first, then prunes.
    """
    work = tmp_path_factory.mktemp('det')
    keep_one = ['--cfg-options', 'default_hooks.checkpoint.max_keep_ckpts=1']
    with open(work / 'killed_run.log', 'w') as log:
        proc = subprocess.Popen(
            [sys.executable, 'tools/train.py', str(DET_CFG), '--work-dir', str(work), *keep_one],
            cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        pointer, partial = work / 'last_checkpoint', work / 'iter_4.pth.tmp'
        deadline = time.time() + 300
        while not partial.exists() and proc.poll() is None and time.time() < deadline:
            if pointer.exists() and 'iter_2' not in pointer.read_text():
                break  # the second save finished between two polls: kill right after it
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_mid_write = partial.exists()  # still there: the kill came before the rename
    assert proc.returncode == -signal.SIGKILL, (work / 'killed_run.log').read_text()[-3000:]
    saved = Path(pointer.read_text().strip())
    killed_at = load_checkpoint(saved)['meta']['iter']
    resumed = run('tools/train.py', DET_CFG, '--work-dir', work, '--resume', *keep_one)
    return dict(work=work, killed_at=killed_at, killed_mid_write=killed_mid_write,
                log=resumed.stdout + resumed.stderr)


def test_resume_after_sigkill_continues_iteration_and_lr_schedule(resumed_run):
    work, killed_at = resumed_run['work'], resumed_run['killed_at']
    assert killed_at in (2, 4)
    if resumed_run['killed_mid_write']:  # iter_2.pth survived, though max_keep_ckpts=1
        assert killed_at == 2
        assert 'Removed the partial checkpoint iter_4.pth.tmp' in resumed_run['log']
    assert f'resumed epoch: 0, iter: {killed_at}' in resumed_run['log']

    lrs = expected_lrs(DET_CFG)
    assert len(set(lrs)) == len(lrs)  # lr differs every iteration, so a restart would show
    first, second = logged_scalars(work)
    assert [r['iter'] for r in second] == list(range(killed_at + 1, len(lrs) + 1))
    for record in first + second:
        assert record['lr'] == pytest.approx(lrs[record['iter'] - 1], rel=1e-6)

    final = load_checkpoint(work / 'iter_6.pth')  # weights_only=True: nothing unsafe needed
    assert final['meta']['iter'] == 6
    assert (work / 'last_checkpoint').read_text().strip() == str(work / 'iter_6.pth')
    # max_keep_ckpts=1, and no temporary file left behind by the killed save
    assert sorted(p.name for p in work.iterdir() if p.is_file() and 'pth' in p.name) == [
        'iter_6.pth']


def test_test_tool_dumps_and_draws_detections(resumed_run, tmp_path):
    out, show = tmp_path / 'results.pkl', tmp_path / 'vis'
    # --show on a headless machine: matplotlib's Agg canvas waits --wait-time, then goes on
    run('tools/test.py', DET_CFG, resumed_run['work'] / 'iter_6.pth', '--work-dir', tmp_path,
        '--out', out, '--show-dir', show, '--show', '--wait-time', '0.01',
        '--cfg-options', 'model.test_cfg.score_thr=0.0',  # an untrained model scores low
        env=dict(ENV, MPLBACKEND='Agg'))
    with open(out, 'rb') as f:
        results = pickle.load(f)
    assert len(results) == 2
    for result in results:
        boxes = result['pred_instances']['bboxes']
        assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 0
        assert 'gt_instances' not in result
    drawn = sorted(p.name for p in show.iterdir())
    assert drawn == sorted(Path(r['img_path']).name for r in results)
    (metrics,) = tmp_path.glob('*/*.json')
    assert 'coco/bbox_mAP' in metrics.read_text()


def test_a_run_past_its_timeout_is_killed_with_every_process_it_started(tmp_path):
    pid_file = tmp_path / 'pid'
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match='still running after 2 s'):
        run('bash', '-c', f'sleep 120 & echo $! > {pid_file}; wait', timeout=2)
    # not after the orphan's 120 s: it held the output pipes open until it was killed
    assert time.monotonic() - start < 60
    pid = int(pid_file.read_text())
    for _ in range(50):  # the orphaned `sleep` is killed with its group, then reaped
        stat = Path(f'/proc/{pid}/stat')
        if not stat.exists() or stat.read_text().split()[2] == 'Z':
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f'process {pid} outlived the timed-out command')


def test_dist_train_two_cpu_processes(tmp_path):
    env = dict(ENV, PORT=str(free_port()), PYTHON=sys.executable)  # this checkout's venv or not
    proc = run('tools/dist_train.sh', DET_CFG, 2, '--work-dir', tmp_path, '--cfg-options',
               'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
               'model.test_cfg.score_thr=0.0', env=env)  # an untrained model scores low
    log = proc.stdout + proc.stderr
    assert 'Distributed training: True' in log and 'GPU number: 2' in log  # world size 2
    assert "backend='gloo'" in log
    assert 'Iter(train) [2/2]' in log and 'coco/bbox_mAP' in log  # gathered across ranks
    assert load_checkpoint(tmp_path / 'iter_2.pth')['meta']['iter'] == 2


def test_segmentation_train_then_test_with_slurm_launcher(tmp_path):
    """The same tools run an mmseg config; test.py runs as a one-task Slurm job would."""
    run('tools/train.py', SEG_CFG, '--work-dir', tmp_path / 'train')
    checkpoint = tmp_path / 'train/iter_2.pth'
    assert load_checkpoint(checkpoint)['meta']['iter'] == 2

    slurm_env = dict(ENV, SLURM_PROCID='0', SLURM_NTASKS='1', SLURM_LOCALID='0',
                     MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port()))
    out, show = tmp_path / 'preds', tmp_path / 'vis'
    proc = run('tools/test.py', SEG_CFG, checkpoint, '--work-dir', tmp_path / 'test',
               '--out', out, '--show-dir', show, '--launcher', 'slurm', env=slurm_env)
    assert 'Distributed launcher: slurm' in proc.stdout + proc.stderr
    assert 'mIoU' in proc.stdout + proc.stderr  # --out keeps the metrics
    # --out is mmseg's folder of label maps: one PNG per image, named after it, at the image's
    # size, in the annotations' encoding (reduce_zero_label's shift undone: 0 stays unused)
    cfg = Config.fromfile(str(SEG_CFG), import_custom_modules=False)
    images = sorted((REPO / cfg.test_dataloader.dataset.data_root
                     / cfg.test_dataloader.dataset.data_prefix.img_path).iterdir())[:2]
    assert sorted(p.name for p in out.iterdir()) == [p.stem + '.png' for p in images]
    from PIL import Image
    for image in images:
        labels = np.array(Image.open(out / f'{image.stem}.png'))
        assert labels.shape == np.array(Image.open(image)).shape[:2]
        assert labels.min() >= 1 and labels.max() <= 150
    assert len(list(show.rglob('*.png'))) == 2


def _apply(config, *argv):
    """tools/test.py's command line folded into ``config`` in-process (or its ValueError)."""
    tool = load_script('tools/test')
    cfg = Config.fromfile(str(config), import_custom_modules=False)
    tool.apply_args(cfg, tool.parse_args([str(config), str(config), *map(str, argv)]))
    return cfg


def test_test_flags_follow_mmdet_and_mmseg(tmp_path):
    hook = _apply(DET_CFG, '--show', '--wait-time', 0.5).default_hooks.visualization
    assert (hook.draw, hook.show, hook.wait_time) == (True, True, 0.5)
    assert 'test_out_dir' not in hook  # --show alone saves nothing
    seg = _apply(SEG_CFG, '--out', tmp_path / 'preds')
    assert seg.test_evaluator.output_dir == str(tmp_path / 'preds')
    assert seg.test_evaluator.keep_results  # the metrics too, as mmseg's test.py
    for config, argv, message in [
            (DET_CFG, ('--out', tmp_path / 'preds'), 'must name a .pkl'),
            (SEG_CFG, ('--out', tmp_path / 'preds.pkl'), 'names a folder for segmentation'),
            (SEG_CFG, ('--show', '--show-dir', tmp_path), 'run once with each')]:
        with pytest.raises(ValueError, match=message):
            _apply(config, *argv)


def test_missing_dataset_names_path_and_fix(tmp_path):
    # Run from an empty directory: the stock COCO config's relative data/coco/ is not there.
    proc = run(REPO / 'tools/train.py', REPO / 'configs/retinanet_poolformer_s12.py',
               cwd=tmp_path, ok=False)
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    assert "train_dataloader.dataset.data_root = 'data/coco/': no such directory" in proc.stderr
    assert '--cfg-options train_dataloader.dataset.data_root=/path/to/coco' in proc.stderr
    assert not (tmp_path / 'work_dirs').exists()  # failed before the Runner started

    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'')
    proc = run(REPO / 'tools/test.py', SEG_CFG, checkpoint, '--cfg-options',
               'test_dataloader.dataset.data_root=/nonexistent/ade', cwd=tmp_path, ok=False)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    assert "test_dataloader.dataset.data_root = '/nonexistent/ade'" in proc.stderr


def test_dataset_check_walks_wrappers_and_accepts_present_data(tmp_path):
    (tmp_path / 'imgs').mkdir()
    (tmp_path / 'ann.json').write_text('{}')
    present = dict(data_root=str(tmp_path), ann_file='ann.json', data_prefix=dict(img='imgs/'))
    cfg = Config(dict(train_dataloader=dict(dataset=dict(
        type='ConcatDataset',
        datasets=[present, dict(type='RepeatDataset', times=2, dataset=dict(
            present, data_prefix=dict(img='missing/')))]))))
    with pytest.raises(DatasetNotFoundError) as err:
        check_dataset_paths(cfg, ['train_dataloader'])
    assert 'train_dataloader.dataset.datasets.1.dataset.data_prefix.img' in str(err.value)
    assert 'datasets.0' not in str(err.value)
    check_dataset_paths(Config(dict(val_dataloader=dict(dataset=present))), ['val_dataloader'])


def test_resume_skips_missing_and_truncated_checkpoints(tmp_path):
    assert find_resumable_checkpoint(str(tmp_path)) is None
    for age, name in enumerate(('iter_6.pth', 'iter_4.pth', 'iter_2.pth')):
        torch.save({'meta': {'iter': 6 - 2 * age}}, tmp_path / name)
        os.utime(tmp_path / name, (1e9 - age, 1e9 - age))  # iter_6.pth is the newest
    whole = (tmp_path / 'iter_6.pth').read_bytes()
    (tmp_path / 'iter_6.pth').write_bytes(whole[:len(whole) // 2])  # a save cut short
    os.utime(tmp_path / 'iter_6.pth', (1e9, 1e9))
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_8.pth'))  # never written
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_4.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_6.pth'))  # truncated
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_4.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_2.pth'))
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_2.pth')


@pytest.mark.parametrize('tool', ['tools/train.py', 'tools/test.py'])
def test_tools_explain_themselves(tool):
    proc = run(tool, '--help')
    assert 'default_scope' in proc.stdout and '--cfg-options' in proc.stdout
