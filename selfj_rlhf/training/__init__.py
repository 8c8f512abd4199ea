"""Training a judge: teacher labels of the policy's own answers (``labeling``) and of response pools (``pool``),
digit self-distillation (``distill``), scalar-head fitting (``scalar_head``), training on cached lower layers
(``top_layers``) and the ``train_judge`` entry point.

May import ``core``, ``data`` and ``judge``.
"""
