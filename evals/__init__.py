"""Benchmarks and checks, each run from the repository root as ``python -m evals.<name>``; they write
``evals/results/<name>.{json,md}``. What they share lives in ``evals.lib``."""
