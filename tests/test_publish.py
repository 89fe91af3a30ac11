"""tools/publish_model.py on a checkpoint tools/train.py wrote: weights only, the hash in the name,
loaded back by path (tools/test.py) and by URL from a loopback HTTP server (hash checked)."""
import functools
import hashlib
import re
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from conftest import CPU_ENV, DET_CFG, REPO, build_model, load_script, run_script
from metaformer_dense.download import DownloadError
from metaformer_runner import load_model_strictly

publish_tool = load_script('tools/publish_model')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A runner checkpoint after two iterations of the tiny RetinaNet-S12, and its folder."""
    work = tmp_path_factory.mktemp('train')
    run_script('tools/train.py', DET_CFG, '--work-dir', work, '--cfg-options',
               'train_cfg.max_iters=2', 'train_cfg.val_interval=100')
    return work / 'iter_2.pth'


@pytest.fixture
def served(tmp_path):
    """A loopback HTTP server of the folder ``tmp_path / 'www'``."""
    root = tmp_path / 'www'
    root.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f'http://127.0.0.1:{httpd.server_address[1]}'
    httpd.shutdown()
    httpd.server_close()


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize('ext', ['pth', 'safetensors'])
def test_published_weights_load_by_path_and_url(ext, trained, served, tmp_path, monkeypatch):
    www, url = served
    publish_tool.main([str(trained), str(www / f'retinanet_tiny.{ext}')])
    (published,) = www.iterdir()
    found = re.fullmatch(rf'retinanet_tiny-([0-9a-f]{{8}})\.{ext}', published.name)
    assert found and _sha256(published).startswith(found[1])

    from metaformer_dense import allow_runner_checkpoints
    allow_runner_checkpoints()
    runner_ckpt = torch.load(trained, map_location='cpu', weights_only=True)
    assert {'optimizer', 'message_hub'} <= set(runner_ckpt)  # what publishing drops
    if ext == 'pth':
        # Plain weights_only=True, in a process without the runner-checkpoint allow-list
        code = ('import sys, torch; c = torch.load(sys.argv[1], weights_only=True); '
                'print(sorted(c), c["meta"]["dataset_meta"]["classes"])')
        out = subprocess.run([sys.executable, '-c', code, str(published)], env=CPU_ENV,
                             capture_output=True, text=True, check=True).stdout
        assert out.strip() == "['meta', 'state_dict'] ('circle', 'square', 'triangle')"
    else:  # by path, through tools/test.py (which reads .safetensors)
        proc = run_script('tools/test.py', DET_CFG, published, '--work-dir', tmp_path / 'test')
        assert 'coco/bbox_mAP' in proc.stdout + proc.stderr

    # By URL: fetched into the hub cache, its sha256 checked against the name, loaded strictly
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    _, model = build_model(DET_CFG)
    load_model_strictly(model, f'{url}/{published.name}')
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, runner_ckpt['state_dict'][key], rtol=0, atol=0)

    # The same name over other bytes (a replaced or corrupted upload) is refused on download
    tampered = www / published.name.replace('retinanet_tiny', 'tampered')
    data = bytearray(published.read_bytes())
    data[len(data) // 2] ^= 1  # one flipped bit
    tampered.write_bytes(bytes(data))
    with pytest.raises(DownloadError, match='does not match the hash prefix'):
        load_model_strictly(model, f'{url}/{tampered.name}')


def test_publish_refuses_what_it_cannot_write(trained, tmp_path):
    with pytest.raises(SystemExit, match='must end in .pth or .safetensors'):
        publish_tool.main([str(trained), str(tmp_path / 'model.pt')])
    publish_tool.main([str(trained), str(tmp_path / 'model.pth')])
    with pytest.raises(SystemExit, match='exists; pass --force'):
        publish_tool.main([str(trained), str(tmp_path / 'model.pth')])
    assert len(list(tmp_path.glob('model*'))) == 1  # nothing half-written left


def test_publish_explains_itself():
    proc = run_script(REPO / 'tools/publish_model.py', '--help')
    assert 'hash' in proc.stdout and 'weights' in proc.stdout
