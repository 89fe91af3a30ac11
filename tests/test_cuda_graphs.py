"""metaformer_dense.cuda_graphs on a machine without a GPU: every call runs the module itself
(the replay from CUDA graphs is tested on CUDA in tests/test_gpu.py), and bad arguments name the
fix."""
import pytest
import torch

from backbone_helpers import randomized
from metaformer_dense.cuda_graphs import GraphedInference


def test_cpu_calls_run_the_module_itself():
    model = randomized('poolformer_s12').eval()
    fast = GraphedInference(model)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert not fast.replayable(x)
        got, ref = fast(x), model(x)
    assert len(got) == len(ref) and all(torch.equal(g, r) for g, r in zip(got, ref))
    assert fast._graphs == {}
    # the wrapped module's weights are the wrapper's: same state dict under 'module.'
    assert set(fast.state_dict()) == {f'module.{k}' for k in model.state_dict()}


def test_bad_arguments_name_the_problem():
    with pytest.raises(TypeError, match='wraps an nn.Module'):
        GraphedInference(lambda x: x)
    with pytest.raises(ValueError, match='warmup must be >= 0'):
        GraphedInference(torch.nn.Identity(), warmup=-1)
