"""``python -m benchmarks.report``: see :mod:`benchmarks.report.cli`."""
from .cli import main

main()
