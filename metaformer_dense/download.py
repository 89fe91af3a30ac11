"""Checkpoints named by URL or Hugging Face hub name, fetched once into the standard caches.

A checkpoint may be given (in ``init_cfg=dict(type='Pretrained', checkpoint=...)``, to
``tools/test.py``, to the demos, to :func:`~metaformer_dense.checkpoint.read_checkpoint`) as:

* a local path;
* an ``http(s)://`` URL, e.g. the PoolFormer release
  ``https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s12.pth.tar``.
  It is downloaded once into torch's hub cache (``$TORCH_HOME/hub/checkpoints``, as
  ``torch.hub`` and mmengine do), with a progress bar, through a temporary file that is renamed
  only when the whole body has arrived, so an interrupted download is never used. When the file
  name carries a hash prefix (torch.hub's ``name-<sha256 prefix>.ext`` convention) it is checked.
* ``hf-hub:<repo>[@revision]``, e.g. ``hf-hub:timm/poolformer_s12.sail_in1k`` (timm's hub names):
  fetched by :mod:`huggingface_hub` into its cache, so ``HF_HOME`` and ``HF_HUB_OFFLINE=1``
  behave as they do for timm and transformers.

Either way the file is then read by the same safe reader as a local one: a downloaded pickle
cannot run code. Failures raise :class:`DownloadError` naming the URL, the cache path where the
file can be put by hand, and the ``--cfg-options`` that points a config at a local file.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

from .errors import DownloadError

__all__ = ['DownloadError', 'HF_PREFIX', 'is_remote', 'resolve_checkpoint', 'url_cache_path']

HF_PREFIX = 'hf-hub:'
# Weight files a timm hub repository may hold, in the order timm prefers them.
_HF_FILES = ('model.safetensors', 'pytorch_model.bin', 'open_clip_pytorch_model.bin')
# torch.hub's convention: 'name-<hex prefix of the sha256>.ext'.
_HASH_IN_NAME = re.compile(r'-([a-f0-9]{6,64})\.')
_HOW_TO_OVERRIDE = ('or point the config at a local file, e.g. --cfg-options '
                    'model.backbone.init_cfg.checkpoint=/path/to/weights.pth')


def is_remote(spec: str) -> bool:
    """Whether ``spec`` names a checkpoint by URL or ``hf-hub:`` name rather than a path."""
    spec = os.fspath(spec)
    return spec.startswith(('http://', 'https://', HF_PREFIX))


def resolve_checkpoint(spec: str, progress: bool = True) -> str:
    """Return a local file for a checkpoint path, URL or ``hf-hub:`` name (fetching if needed).

    Args:
        spec: A local path, an ``http(s)://`` URL or ``hf-hub:<repo>[@revision]``.
        progress: Show a progress bar while downloading.

    Raises:
        DownloadError: no network, an HTTP error, an HTML page instead of a checkpoint, a
            truncated body, a hash mismatch, or a hub name with no cached or fetchable weights.
    """
    spec = os.fspath(spec)
    if spec.startswith(HF_PREFIX):
        return _hf_hub_file(spec[len(HF_PREFIX):])
    if spec.startswith(('http://', 'https://')):
        dst = url_cache_path(spec)
        if not os.path.isfile(dst):
            _download(spec, dst, progress)
        return dst
    return spec


def url_cache_path(url: str) -> str:
    """Where a URL's file is cached: ``<torch hub dir>/checkpoints/<file name>``."""
    import torch.hub
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise DownloadError(f'the URL {url!r} names no file (it ends in "/")')
    return os.path.join(torch.hub.get_dir(), 'checkpoints', name)


def _fail(url: str, dst: str, problem: str) -> DownloadError:
    return DownloadError(
        f'could not download the checkpoint {url}: {problem}. Download it yourself and save it '
        f'as {dst} (the cache this toolkit reads first), {_HOW_TO_OVERRIDE}')


def _download(url: str, dst: str, progress: bool) -> None:
    """Stream ``url`` into ``dst`` through a temporary file in the same folder."""
    folder = os.path.dirname(dst)
    os.makedirs(folder, exist_ok=True)
    request = urllib.request.Request(url, headers={'User-Agent': 'metaformer-dense'})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as exc:
        raise _fail(url, dst, f'the server answered HTTP {exc.code} ({exc.reason})') from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, 'reason', exc)
        raise _fail(url, dst, f'no connection ({reason}); is this machine offline?') from exc
    with response:
        kind = response.headers.get('Content-Type', '')
        if kind.split(';')[0].strip().lower() in ('text/html', 'application/xhtml+xml'):
            raise _fail(url, dst, f'the server sent a web page ({kind}), not a checkpoint '
                        '(a login, error or landing page?)')
        length = response.headers.get('Content-Length')
        expected = int(length) if length and length.isdigit() else None
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(dst) + '.', suffix='.partial', dir=folder)
        sha = hashlib.sha256()
        got = 0
        try:
            bar = _progress_bar(expected, os.path.basename(dst)) if progress else None
            with os.fdopen(fd, 'wb') as out:
                while True:
                    try:
                        chunk = response.read(1 << 20)
                    except (OSError, ValueError) as exc:  # IncompleteRead, reset connection
                        raise _fail(url, dst, f'the connection broke after {got} bytes ({exc})') from exc
                    if not chunk:
                        break
                    out.write(chunk)
                    sha.update(chunk)
                    got += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            if bar is not None:
                bar.close()
            if expected is not None and got != expected:
                raise _fail(url, dst, f'the body is truncated ({got} of {expected} bytes arrived)')
            if got == 0:
                raise _fail(url, dst, 'the server sent an empty body')
            _check_hash(url, dst, sha.hexdigest())
            os.replace(tmp, dst)  # only a complete, verified file ever has the final name
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def _check_hash(url: str, dst: str, digest: str) -> None:
    found = _HASH_IN_NAME.search(os.path.basename(dst))
    if found and not digest.startswith(found.group(1)):
        raise _fail(url, dst, f'its sha256 {digest[:len(found.group(1))]}... does not match the '
                    f'hash prefix {found.group(1)} in its file name (corrupt or replaced file)')


def _progress_bar(total: Optional[int], name: str):
    from tqdm import tqdm
    return tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, desc=name)


def _hf_hub_file(name: str) -> str:
    """The local file of a hub repository's weights, via huggingface_hub and its cache."""
    repo, _, revision = name.partition('@')
    if not repo or '/' not in repo:
        raise DownloadError(f'{HF_PREFIX}{name!r} is not a hub name; expected '
                            f'{HF_PREFIX}<owner>/<repo>[@revision], e.g. '
                            f'{HF_PREFIX}timm/poolformer_s12.sail_in1k')
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub import constants
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError as exc:
        raise DownloadError(f'{HF_PREFIX}{name} needs the huggingface_hub package '
                            '(pip install huggingface_hub)') from exc
    problems = []
    for filename in _HF_FILES:
        try:
            return hf_hub_download(repo, filename, revision=revision or None)
        except EntryNotFoundError:
            continue  # the repository has no such file: try the next kind
        except LocalEntryNotFoundError as exc:  # offline, or no connection
            problems.append(f'{filename}: {exc}'.split('\n')[0])
        except Exception as exc:  # repository missing, gated, HTTP errors
            problems.append(f'{filename}: {type(exc).__name__}: {exc}'.split('\n')[0])
            break
    offline = ' (HF_HUB_OFFLINE is set)' if constants.HF_HUB_OFFLINE else ''
    raise DownloadError(
        f'could not get weights for {HF_PREFIX}{name} from the Hugging Face hub or its cache '
        f'{constants.HF_HUB_CACHE}{offline}: {"; ".join(problems) or "no weight file found"}. '
        f'Fetch it on a connected machine (huggingface-cli download {repo}) and copy the cache, '
        f'{_HOW_TO_OVERRIDE}')

