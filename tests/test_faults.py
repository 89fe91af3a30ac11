"""Runs that meet a fault: a killed worker, a second node, a bad image, a loss gone NaN.

All of it runs for real on CPU through tools/train.py and tools/dist_train.sh (torchrun, gloo) on
the tiny tools configs: 96 px detection images or 64 px segmentation crops, a few iterations.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import CPU_ENV, DET_CFG, REPO, run_script
from metaformer_dense import allow_runner_checkpoints
from mmengine.config import Config

from metaformer_runner.faults import elastic_resume_checkpoint, use_fault_hooks

SEG_CFG = REPO / 'tests/configs/semantic_fpn_poolformer_s12_tools.py'
#: dist_train.sh runs this interpreter, whatever checkout or venv the tests run from.
ENV = dict(CPU_ENV, PYTHON=sys.executable)
#: Seconds a whole job may take (2 shared cores under load: a minute or two). Past it the job
#: is killed and the test fails naming the hang, instead of waiting out gloo's 30 minutes.
TIMEOUT = 300
#: gloo's timeout for a collective or a connection, so that a rank waiting on a dead or wedged
#: peer fails inside the job in minutes (mmengine's default is 30 minutes).
GLOO_TIMEOUT = ['--cfg-options', 'env_cfg.dist_cfg.timeout=120']


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def load_checkpoint(path) -> dict:
    allow_runner_checkpoints()
    return torch.load(path, map_location='cpu', weights_only=True)


def assert_same_weights(a: Path, b: Path) -> None:
    """Bit-identical state dicts (see test_killed_worker_restarts... for why no tolerance)."""
    state_a, state_b = load_checkpoint(a)['state_dict'], load_checkpoint(b)['state_dict']
    assert state_a.keys() == state_b.keys()
    differing = [k for k in state_a if not torch.equal(state_a[k], state_b[k])]
    assert not differing, f'{len(differing)} tensors differ, e.g. {differing[:3]}'


def worker_pids(agent_pid: int) -> dict:
    """``{rank: pid}`` of the workers a torchrun agent started (read from /proc)."""
    children = Path(f'/proc/{agent_pid}/task/{agent_pid}/children').read_text().split()
    ranks = {}
    for pid in map(int, children):
        try:
            environ = Path(f'/proc/{pid}/environ').read_bytes().split(b'\0')
        except FileNotFoundError:
            continue
        env = dict(item.decode(errors='replace').split('=', 1) for item in environ if b'=' in item)
        if 'RANK' in env:
            ranks[int(env['RANK'])] = pid
    return ranks


def descendants(pid: int) -> list:
    """Every process below ``pid`` (torchrun's workers run in sessions of their own)."""
    try:
        children = Path(f'/proc/{pid}/task/{pid}/children').read_text().split()
    except FileNotFoundError:
        return []
    return [p for child in map(int, children) for p in (child, *descendants(child))]


def start_job(log: Path, *args, env: dict) -> subprocess.Popen:
    """``tools/dist_train.sh ARGS`` in the background, its output going to ``log``."""
    with open(log, 'w') as out:
        return subprocess.Popen(['tools/dist_train.sh', *map(str, args)], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def stop_job(proc: subprocess.Popen) -> None:
    """SIGKILL a job's agent and all its workers, if still running (nothing is left behind)."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def wait_job(proc: subprocess.Popen, log: Path, timeout: float = TIMEOUT) -> int:
    """The job's exit code; a job still running after ``timeout`` s is killed and fails the test."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        alive = [proc.pid, *descendants(proc.pid)]
        for pid in alive[1:]:  # tools/train.py prints every thread's stack on SIGUSR1
            os.kill(pid, signal.SIGUSR1)
        time.sleep(3)
        stop_job(proc)
        pytest.fail(f'dist_train.sh hung: still running after {timeout:.0f} s (processes '
                    f'{alive} killed). Log tail:\n{log.read_text()[-8000:]}', pytrace=False)


@pytest.fixture
def jobs():
    """Jobs a test starts; any still running when it ends (a failed assertion) are killed."""
    started = []
    yield started
    for proc in started:
        stop_job(proc)


# ----------------------------------------------------------------------------- elastic restart
def test_killed_worker_restarts_resumes_and_matches_uninterrupted_run(tmp_path, jobs):
    """SIGKILL rank 1 after the first checkpoint; torchrun restarts both, they resume.

    The final weights must be bit-identical to an uninterrupted run: the tiny config has no
    random augmentation and no drop path, the InfiniteSampler's order is a function of the seed
    and the iteration mmengine skips to on resume, AdamW's state and the LR schedule are in the
    checkpoint, and the gloo all-reduce of two ranks adds the same two numbers either way. Any
    difference would mean the resume lost state, so no tolerance is allowed.
    """
    reference = tmp_path / 'reference'  # the config's seed (0) for both runs
    jobs.append(start_job(tmp_path / 'reference.log', DET_CFG, 2, '--work-dir', reference,
                          *GLOO_TIMEOUT, env=dict(ENV, PORT=str(free_port()))))
    rc = wait_job(jobs[-1], tmp_path / 'reference.log')
    assert rc == 0, (tmp_path / 'reference.log').read_text()[-4000:]

    work = tmp_path / 'killed'
    env = dict(ENV, PORT=str(free_port()), MAX_RESTARTS='1')
    proc = start_job(tmp_path / 'killed.log', DET_CFG, 2, '--work-dir', work, *GLOO_TIMEOUT,
                     env=env)
    jobs.append(proc)
    deadline = time.time() + TIMEOUT
    while not (work / 'iter_2.pth').exists() and proc.poll() is None:
        assert time.time() < deadline, f'no first checkpoint in {TIMEOUT} s'
        time.sleep(0.05)
    assert proc.poll() is None, (tmp_path / 'killed.log').read_text()[-3000:]
    killed = worker_pids(proc.pid)[1]
    os.kill(killed, signal.SIGKILL)
    rc = wait_job(proc, tmp_path / 'killed.log')
    log = (tmp_path / 'killed.log').read_text()
    assert rc == 0, log[-4000:]
    assert f'failed (exitcode: -9) local_rank: 1 (pid: {killed})' in log  # torchrun saw it
    resumed = re.findall(r'Elastic restart 1: resuming from (\S+)\.\n', log)
    assert resumed and set(resumed) <= {str(work / 'iter_2.pth'), str(work / 'iter_4.pth')}, log
    resumed_iter = int(re.search(r'iter_(\d)\.pth', resumed[0]).group(1))
    assert f'resumed epoch: 0, iter: {resumed_iter}' in log
    assert 'Iter(train) [6/6]' in log
    assert load_checkpoint(work / 'iter_6.pth')['meta']['iter'] == 6
    assert_same_weights(work / 'iter_6.pth', reference / 'iter_6.pth')


def test_elastic_resume_takes_newest_complete_checkpoint_not_a_stale_pointer(tmp_path):
    assert elastic_resume_checkpoint(str(tmp_path / 'absent')) is None
    for age, name in enumerate(('iter_6.pth', 'iter_4.pth', 'iter_2.pth')):
        torch.save({'meta': {'iter': 6 - 2 * age}}, tmp_path / name)
        os.utime(tmp_path / name, (1e9 - age, 1e9 - age))  # iter_6.pth is the newest
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_2.pth'))  # stale pointer
    assert elastic_resume_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_6.pth')
    whole = (tmp_path / 'iter_6.pth').read_bytes()
    (tmp_path / 'iter_6.pth').write_bytes(whole[:len(whole) // 2])  # killed mid-write
    (tmp_path / 'iter_8.pth.tmp').write_bytes(whole)  # never renamed into place
    assert elastic_resume_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_4.pth')


# ----------------------------------------------------------------------------- two nodes
def test_two_single_process_nodes_on_loopback(tmp_path, jobs):
    """NNODES=2 and NODE_RANK 0/1 on 127.0.0.1, as two machines without Slurm would run it.

    Both "nodes" train on the same single image (a 1-image dataset is padded to both ranks),
    so with weights kept in step by DDP they must log the same loss at every iteration.
    ``log_level=DEBUG`` makes mmengine write one log per rank (``..._rank0.log``, ``_rank1``).
    """
    port = str(free_port())
    opts = [*GLOO_TIMEOUT, 'train_dataloader.dataset.indices=1', 'train_cfg.max_iters=2',
            'train_cfg.val_interval=100', 'log_level=DEBUG']
    for node in (0, 1):
        env = dict(ENV, NNODES='2', NODE_RANK=str(node), MASTER_ADDR='127.0.0.1', PORT=port)
        jobs.append(start_job(tmp_path / f'node{node}.log', DET_CFG, 1, '--work-dir',
                              tmp_path / 'work', *opts, env=env))
    codes = [wait_job(proc, tmp_path / f'node{node}.log') for node, proc in enumerate(jobs)]
    logs = [(tmp_path / f'node{node}.log').read_text() for node in (0, 1)]
    assert codes == [0, 0], '\n----\n'.join(l[-3000:] for l in logs)
    assert 'Distributed training: True' in logs[0] and 'GPU number: 2' in logs[0]  # world size
    assert load_checkpoint(tmp_path / 'work/iter_2.pth')['meta']['iter'] == 2

    def losses(path: Path) -> list:
        return re.findall(r'Iter\(train\) \[\s*\d/2\].*?\sloss: (\S+)', path.read_text())
    rank0, = (tmp_path / 'work').glob('2*/2*_rank0.log')
    rank1, = (tmp_path / 'work').glob('2*/2*_rank1.log')
    assert len(losses(rank0)) == 2 and losses(rank0) == losses(rank1)


# ----------------------------------------------------------------------------- bad data
@pytest.fixture
def coco_copy(tmp_path) -> tuple:
    """data/tiny_coco copied, and the file name of the 3rd of the 4 training images used."""
    from mmdet.datasets import CocoDataset
    root = tmp_path / 'tiny_coco'
    shutil.copytree(REPO / 'data/tiny_coco', root)
    dataset = CocoDataset(data_root=str(root), ann_file='annotations/instances_train.json',
                          data_prefix=dict(img='train/'), indices=4, pipeline=[],
                          metainfo=dict(classes=('circle', 'square', 'triangle')))
    third = dataset.get_data_info(2)
    return root, Path(third['img_path']), third['img_id']


@pytest.mark.parametrize('damage, workers', [('missing', 0), ('corrupt', 0), ('corrupt', 2)],
                         ids=['missing', 'corrupt', 'corrupt-in-a-worker'])
def test_bad_image_stops_naming_file_and_entry(coco_copy, tmp_path, damage, workers):
    """Images are read in order (no shuffle): iterations 1-2 train and save, the 3rd is bad."""
    root, bad, img_id = coco_copy
    if damage == 'missing':
        bad.unlink()
    else:
        bad.write_bytes(b'not a JPEG: half a file from an interrupted copy')
    work = tmp_path / 'work'
    proc = run_script('tools/train.py', DET_CFG, '--work-dir', work, '--cfg-options',
                      f'train_dataloader.dataset.data_root={root}/',
                      'train_dataloader.dataset.indices=4', 'train_dataloader.sampler.shuffle=False',
                      f'train_dataloader.num_workers={workers}', ok=False, env=ENV,
                      timeout=TIMEOUT)
    assert proc.returncode != 0
    message, out = proc.stderr.strip().splitlines()[-1], proc.stdout + proc.stderr
    assert message.startswith('error: Could not load the sample'), out[-3000:]
    assert str(bad) in message and f"img_id={img_id}" in message
    assert 'sample 2 of 4 in' in message and 'instances_train.json' in message
    if damage == 'missing':
        assert f'{bad} does not exist' in message
    else:
        assert 'failed to load image' in message
    assert 'Iter(train) [2/6]' in out and 'Iter(train) [3/6]' not in out
    assert load_checkpoint(work / 'iter_2.pth')['meta']['iter'] == 2  # written and intact
    assert (work / 'last_checkpoint').read_text().strip() == str(work / 'iter_2.pth')
    assert not list(work.glob('*.tmp'))


# ------------------------------------------------------------------ iteration loops with workers
#: The tools segmentation config (2 training images, batch 1: one pass is 2 iterations) trained
#: for 5 iterations through dataloader workers: 2.5 passes over its data.
WORKER_OPTIONS = ['train_cfg.max_iters=5', 'train_cfg.val_interval=5',
                  'default_hooks.checkpoint.interval=5', 'train_dataloader.num_workers=2']


@pytest.mark.parametrize('persistent', [True, False], ids=['persistent', 'respawned'])
def test_iteration_loop_with_workers_trains_past_one_pass_over_its_data(tmp_path, persistent):
    """mmseg's InfiniteSampler never ends; the loop must not meet the end of its dataloader.

    A hook that restarted the loop's started iterator closed the sampler's shared index
    generator, so the loader ran dry after one pass ("Reach the end of the dataloader", then
    StopIteration): every Semantic FPN / UperNet run stopped after ~630 of 40k iterations.
    """
    work = tmp_path / 'work'
    proc = run_script('tools/train.py', SEG_CFG, '--work-dir', work, '--cfg-options',
                      *WORKER_OPTIONS, f'train_dataloader.persistent_workers={persistent}',
                      env=ENV, timeout=TIMEOUT)
    out = proc.stdout + proc.stderr
    assert 'Iter(train) [5/5]' in out, out[-3000:]
    assert 'Reach the end of the dataloader' not in out
    assert 'mIoU' in out
    assert load_checkpoint(work / 'iter_5.pth')['meta']['iter'] == 5


def test_bad_label_map_in_a_worker_stops_naming_file_and_entry(tmp_path):
    """The naming holds inside dataloader workers of an iteration-based loop too."""
    root = tmp_path / 'tiny_ade20k'
    shutil.copytree(REPO / 'data/tiny_ade20k', root)
    labels = sorted((root / 'annotations/training').glob('*.png'))
    bad = labels[1]  # the 2nd of the 2 training samples the tools config uses
    bad.unlink()
    proc = run_script('tools/train.py', SEG_CFG, '--work-dir', tmp_path / 'work',
                      '--cfg-options', *WORKER_OPTIONS, f'train_dataloader.dataset.data_root={root}',
                      'train_dataloader.sampler.shuffle=False', ok=False, env=ENV,
                      timeout=TIMEOUT)
    assert proc.returncode != 0
    message, out = proc.stderr.strip().splitlines()[-1], proc.stdout + proc.stderr
    assert message.startswith('error: Could not load the sample'), out[-3000:]
    assert f'seg_map_path={str(bad)!r}' in message and f'{bad} does not exist' in message
    assert 'sample 1 of 2 in' in message


# ----------------------------------------------------------------------------- NaN loss
@pytest.mark.parametrize('config', [DET_CFG, SEG_CFG], ids=['detection', 'segmentation'])
def test_nan_loss_stops_at_its_iteration_naming_last_good_checkpoint(tmp_path, config):
    """From iteration 3 the lr is multiplied by 1e30: AdamW moves every weight by ~1e26 and the
    next forward pass overflows. Training must stop there, before saving that iteration."""
    diverging = tmp_path / 'diverging.py'
    diverging.write_text(
        f"_base_ = '{config}'\n"
        "param_scheduler = [dict(type='MultiStepLR', by_epoch=False, milestones=[2], "
        "gamma=1e30)]\n"
        "train_cfg = dict(max_iters=6, val_interval=6)\n"
        "default_hooks = dict(checkpoint=dict(by_epoch=False, interval=2))\n")
    work = tmp_path / 'work'
    proc = run_script('tools/train.py', diverging, '--work-dir', work, ok=False, env=ENV,
                      timeout=TIMEOUT)
    assert proc.returncode != 0
    message, out = proc.stderr.strip().splitlines()[-1], proc.stdout + proc.stderr
    found = re.match(r'error: The loss is not finite at iteration (\d) \(.*loss=(nan|inf)', message)
    assert found, out[-3000:]
    stopped_at = int(found.group(1))
    assert stopped_at in (4, 5), message  # iteration 3 steps with lr 1e26; 4 or 5 overflows
    last_good = work / f'iter_{2 * ((stopped_at - 1) // 2)}.pth'
    assert f'Last good checkpoint: {last_good}.' in message
    assert load_checkpoint(last_good)['meta']['iter'] == 2 * ((stopped_at - 1) // 2)
    assert not (work / f'iter_{stopped_at}.pth').exists() and not (work / 'iter_6.pth').exists()
    logged = re.findall(r'Iter\(train\) \[\s*(\d)/6\]', out)
    assert logged and int(logged[-1]) == stopped_at - 1  # nothing logged past the NaN


def test_every_config_gets_both_checks_and_mmdets_silent_one_is_replaced():
    cfg = Config(dict(custom_hooks=[dict(type='CheckInvalidLossHook', interval=50),
                                    dict(type='EMAHook')]))
    use_fault_hooks(cfg)
    assert [h['type'] for h in cfg.custom_hooks] == ['EMAHook', 'StopOnNonFiniteLossHook']
    # a configured one is kept as it is; the bad-sample hook of configs dumped by older versions
    # of the toolkit is dropped (SampleNamingRunner does its job)
    cfg = Config(dict(custom_hooks=[dict(type='StopOnNonFiniteLossHook', interval=10),
                                    dict(type='NameBadSamplesHook')]))
    use_fault_hooks(cfg)
    assert cfg.custom_hooks == [dict(type='StopOnNonFiniteLossHook', interval=10)]


@pytest.mark.parametrize('sampler', ['DefaultSampler', 'InfiniteSampler'])
def test_runner_dataloaders_name_a_bad_sample_in_persistent_workers(tmp_path, sampler):
    """Epoch-based (DefaultSampler) or iteration-based: a worker's error names the sample."""
    import mmseg.datasets  # noqa: F401  (registers ADE20KDataset and its transforms)
    from mmengine.registry import init_default_scope
    from metaformer_runner.faults import BadSampleError, SampleNamingRunner
    init_default_scope('mmseg')
    root = tmp_path / 'tiny_ade20k'
    shutil.copytree(REPO / 'data/tiny_ade20k', root)
    bad = sorted((root / 'images/training').glob('*.jpg'))[0]
    bad.write_bytes(b'')
    loader = SampleNamingRunner.build_dataloader(dict(
        batch_size=1, num_workers=2, persistent_workers=True,
        sampler=dict(type=sampler, shuffle=False),
        dataset=dict(type='ADE20KDataset', data_root=str(root), indices=2,
                     data_prefix=dict(img_path='images/training',
                                      seg_map_path='annotations/training'),
                     pipeline=[dict(type='LoadImageFromFile'), dict(type='PackSegInputs')])),
        seed=0)
    with pytest.raises(BadSampleError, match=rf'{re.escape(str(bad))} is empty'):
        next(iter(loader))
