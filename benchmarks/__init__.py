"""Everything measured: the tools a user runs, and (in ``studies/``) the studies behind the defaults.

Run each from the repository root as a module: ``python -m benchmarks.<tool>`` (``speed``,
``report``, ``learning detection``, ``learning segmentation``) or
``python -m benchmarks.studies.<study>``. The tools' records go to ``benchmarks/results/``, the
studies' to ``benchmarks/studies/results/``; ``benchmarks/README.md`` lists them all.
"""
