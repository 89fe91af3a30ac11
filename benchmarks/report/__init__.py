"""Params, FLOPs, GPU latency / memory and your AP / mIoU of every config, next to the paper's.

``python -m benchmarks.report`` (``make report``) writes ``benchmarks/results/report.{md,png}``.

* :mod:`.measure`: build a config's model and measure it;
* :mod:`.rows`: one config's row (measurements, your results from its work dir, the paper's);
* :mod:`.render`: the markdown tables and the plot (:mod:`.upernet`: the UperNet part);
* :mod:`.cli`: the command line.
"""
from .cli import main
from .render import paper_cell, plot, to_markdown
from .rows import NO_GPU, NO_RESULTS, PAPER, Row, analyse

__all__ = ['main', 'analyse', 'Row', 'to_markdown', 'plot', 'paper_cell', 'PAPER', 'NO_GPU',
           'NO_RESULTS']
