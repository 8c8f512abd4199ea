"""What the benchmark scripts share: results and machine info (``common``), metrics, best-of-n baselines,
judge attacks, the score cache and fair timing. Imports ``selfj_rlhf``, never a script."""
