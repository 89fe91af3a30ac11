"""benchmarks/learning.py, the "does it learn" runner: its records render from their JSON.

The runs themselves train for minutes to an hour (their records are in benchmarks/results/);
here the detection record is re-rendered from a copy of the committed JSON.
"""
import json
import shutil

from benchmarks import learning
from conftest import REPO


def test_detection_record_renders_from_its_json(tmp_path, monkeypatch):
    shutil.copy(REPO / 'benchmarks/results/learning_detection.json', tmp_path / 'det.json')
    monkeypatch.setattr(learning, 'RECORD', tmp_path / 'det')
    learning.main(['detection', '--render'])
    runs = json.loads((tmp_path / 'det.json').read_text())['runs']
    md = (tmp_path / 'det.md').read_text()
    for run in runs.values():
        assert f'| `{run["config"]}` | {run["epochs"]} ({run["iterations"]}) | ' \
               f'{run["final"]["coco/bbox_mAP"]:.3f} |' in md
        assert f'reproduce: `{run["command"]}`' in md
    assert 'python -m benchmarks.learning detection' in md


def test_reproduce_command_names_this_runner(monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '2')
    assert learning.command_line(['segmentation', '--iters', '80']) == \
        'OMP_NUM_THREADS=2 python -m benchmarks.learning segmentation --iters 80'
