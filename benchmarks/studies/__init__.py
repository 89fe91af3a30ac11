"""The studies behind the toolkit's defaults: instruments that decided how the backbone runs.

Each answers one question and keeps its record in ``benchmarks/studies/results/``; nothing in the
toolkit or in the user tools of ``benchmarks/`` imports them. Run them as modules from the
repository root, e.g. ``python -m benchmarks.studies.train_step --device cuda``;
``benchmarks/README.md`` lists what each measures, its command and its run time.
"""
