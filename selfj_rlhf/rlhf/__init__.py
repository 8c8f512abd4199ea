"""Using the judge to improve a policy: the TRL reward (``reward``), best-of-n, preference pairs, rejection-sampling
and DPO rounds (``rounds``), GRPO, selective answering and AlpacaEval.

May import ``core``, ``data``, ``judge`` and ``serving``'s client (a reward can score through a judge server).
"""
