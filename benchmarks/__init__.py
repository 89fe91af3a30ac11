"""Everything measured: speed, the report against published numbers, learning runs.

Run the scripts from the repository root as modules (``python -m benchmarks.speed``,
``python -m benchmarks.report``) or as files (``python benchmarks/learning_detection.py``);
their records go to ``benchmarks/results/``.
"""
