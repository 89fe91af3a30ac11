"""Checkpoints by URL and by hub name: a loopback HTTP server and a pre-filled offline hub cache.

The server listens on 127.0.0.1 only and serves what each test puts in ``server.routes``; the
torch hub cache and the Hugging Face cache are temporary folders, so nothing here touches the
network or the user's caches.
"""
import hashlib
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from metaformer_dense import MetaFormerBackbone
from metaformer_dense.checkpoint import CheckpointError, read_checkpoint
from metaformer_dense.download import DownloadError, resolve_checkpoint, url_cache_path
from conftest import REPO



class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404, 'Not Found')
            return
        body, kind, send = route['body'], route.get('type', 'application/octet-stream'), route.get('send')
        self.send_response(200)
        self.send_header('Content-Type', kind)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body[:send] if send is not None else body)
        self.server.hits[self.path] = self.server.hits.get(self.path, 0) + 1
        if send is not None:  # a body cut short: the connection closes early
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    httpd.routes, httpd.hits = {}, {}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f'http://127.0.0.1:{httpd.server_address[1]}'
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / 'torch_home'
    monkeypatch.setenv('TORCH_HOME', str(home))
    return home


def _stage0_checkpoint(seed: int = 0) -> dict:
    """timm-layout weights of PoolFormer-S12's stem and first stage (what out_indices=(0,) builds)."""
    torch.manual_seed(seed)
    donor = MetaFormerBackbone('poolformer_s12', out_indices=(0,), channels_last=False)
    return {k: v.clone() for k, v in donor.state_dict().items() if not k.startswith('out_norms.')}


def _bytes(obj) -> bytes:
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _backbone(checkpoint: str) -> MetaFormerBackbone:
    model = MetaFormerBackbone('poolformer_s12', out_indices=(0,),
                               init_cfg=dict(type='Pretrained', checkpoint=checkpoint))
    model.init_weights()
    return model


def _cache_files(torch_home: Path):
    folder = torch_home / 'hub' / 'checkpoints'
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_config_backbone_loads_by_url_then_from_cache(server, tmp_path, torch_home):
    state = _stage0_checkpoint()
    body = _bytes(state)
    server.routes['/v1.0/poolformer_s12.pth.tar'] = dict(body=body)
    url = server.url + '/v1.0/poolformer_s12.pth.tar'
    local = tmp_path / 'poolformer_s12.pth.tar'
    local.write_bytes(body)

    by_url, by_path = _backbone(url), _backbone(str(local))
    for k, v in by_path.state_dict().items():
        if not k.startswith('out_norms.'):
            assert torch.equal(by_url.state_dict()[k], v), k
    assert torch.equal(by_url.state_dict()['stem.conv.weight'], state['stem.conv.weight'])
    cached = torch_home / 'hub' / 'checkpoints' / 'poolformer_s12.pth.tar'
    assert cached.read_bytes() == body and url_cache_path(url) == str(cached)
    assert server.hits == {'/v1.0/poolformer_s12.pth.tar': 1}

    server.shutdown()  # the second load must come from the cache
    again = _backbone(url)
    assert torch.equal(again.state_dict()['stem.conv.weight'], state['stem.conv.weight'])
    assert _cache_files(torch_home) == ['poolformer_s12.pth.tar']


@pytest.mark.parametrize('case', ['404', 'html', 'truncated', 'wrong_hash', 'offline'])
def test_failed_downloads_are_named_and_leave_nothing_in_the_cache(server, torch_home, case):
    body = _bytes(_stage0_checkpoint())
    name = 'weights.pth'
    if case == 'html':
        server.routes['/' + name] = dict(body=b'<html><body>Sign in</body></html>', type='text/html')
    elif case == 'truncated':
        server.routes['/' + name] = dict(body=body, send=len(body) // 3)
    elif case == 'wrong_hash':
        name = 'weights-0123abcd.pth'  # torch.hub's name-<sha256 prefix> convention
        assert not hashlib.sha256(body).hexdigest().startswith('0123abcd')
        server.routes['/' + name] = dict(body=body)
    url = f'{server.url}/{name}'
    if case == 'offline':
        server.shutdown()
        server.server_close()  # nothing listens on the port any more
    with pytest.raises(DownloadError) as err:
        _backbone(url)
    msg = str(err.value)
    expected = {'404': 'HTTP 404', 'html': 'web page', 'truncated': 'truncated',
                'wrong_hash': 'does not match the hash prefix 0123abcd', 'offline': 'no connection'}
    assert expected[case] in msg
    assert url in msg and url_cache_path(url) in msg, msg  # where to put the file by hand
    assert '--cfg-options model.backbone.init_cfg.checkpoint=' in msg
    assert _cache_files(torch_home) == []  # no partial or unverified file stays


def test_matching_hash_prefix_is_accepted(server):
    body = _bytes(_stage0_checkpoint())
    name = f'weights-{hashlib.sha256(body).hexdigest()[:8]}.pth'
    server.routes['/' + name] = dict(body=body)
    path = resolve_checkpoint(f'{server.url}/{name}', progress=False)
    assert Path(path).read_bytes() == body


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_pickle_payload_served_by_url_does_not_run(server, tmp_path):
    marker = tmp_path / 'pwned'
    server.routes['/evil.pth'] = dict(body=_bytes({'state_dict': _Payload(str(marker))}))
    with pytest.raises(CheckpointError, match='refused'):
        read_checkpoint(server.url + '/evil.pth')
    assert not marker.exists()


def _prefill_hf_cache(hf_home: Path, repo: str, files: dict) -> None:
    """Lay files out as huggingface_hub's cache does (refs/main -> snapshots/<commit>/...)."""
    commit = 'a' * 40
    root = hf_home / 'hub' / ('models--' + repo.replace('/', '--'))
    (root / 'refs').mkdir(parents=True)
    (root / 'refs' / 'main').write_text(commit)
    snap = root / 'snapshots' / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)


_HF_SCRIPT = '''
import sys, torch
from metaformer_dense import MetaFormerBackbone
from metaformer_dense.checkpoint import CheckpointError
model = MetaFormerBackbone('poolformer_s12', out_indices=(0,),
                           init_cfg=dict(type='Pretrained', checkpoint=sys.argv[1]))
try:
    model.init_weights()
except CheckpointError as exc:
    print('ERROR', exc)
    sys.exit(3)
torch.save(model.state_dict()['stem.conv.weight'], sys.argv[2])
'''


def test_hf_hub_name_loads_from_offline_cache(tmp_path):
    from safetensors.torch import save_file
    state = _stage0_checkpoint(seed=3)
    weights = tmp_path / 'model.safetensors'
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    hf_home = tmp_path / 'hf'
    _prefill_hf_cache(hf_home, 'timm/poolformer_s12.sail_in1k', {'model.safetensors': weights.read_bytes()})
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE='1', PYTHONPATH=str(REPO),
               OMP_NUM_THREADS='1')
    env.pop('HF_HUB_CACHE', None)
    out = tmp_path / 'stem.pt'
    run = subprocess.run([sys.executable, '-c', _HF_SCRIPT, 'hf-hub:timm/poolformer_s12.sail_in1k',
                          str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert torch.equal(torch.load(out), state['stem.conv.weight'])

    # A name that is not in the offline cache: an error naming the cache and the way out.
    run = subprocess.run([sys.executable, '-c', _HF_SCRIPT, 'hf-hub:timm/poolformer_s24.sail_in1k',
                          str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 3, run.stdout + run.stderr
    assert 'HF_HUB_OFFLINE is set' in run.stdout and str(hf_home) in run.stdout
    assert '--cfg-options model.backbone.init_cfg.checkpoint=' in run.stdout


def test_every_full_config_names_its_weights_by_url_or_hub_name():
    from mmengine.config import Config
    configs = sorted((REPO / 'configs').glob('*.py'))
    assert configs
    for path in configs:
        cfg = Config.fromfile(str(path), import_custom_modules=False)
        checkpoint = cfg.model.backbone.init_cfg.checkpoint
        arch = cfg.model.backbone.arch
        assert checkpoint.startswith(('https://', 'hf-hub:')), (path.name, checkpoint)
        # The file named is the one for the config's arch.
        assert checkpoint.split('/')[-1].split('.')[0] == arch, (path.name, checkpoint)
