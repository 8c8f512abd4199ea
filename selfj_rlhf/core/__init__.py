"""The ground floor: errors, records and atomic writes (``io``), model specs and the embedded model (``models``),
policy sampling (``generation``), left padding (``tensors``) and decoder-layer access (``layers``).

Imports nothing from the rest of ``selfj_rlhf``.
"""
