"""Many continuations of one token prefix: the prefix runs once, and each batch of continuations reads its KV
cache through broadcast views (``expand``: no copy of the prefix per batch; the forward's own concatenation makes
the only copy). Used by the judge's shared-prompt scoring and by the relevance gate."""

from __future__ import annotations

import inspect
from typing import Sequence

import torch

from .tensors import left_pad


def cache_argument(model) -> str:
    """``cache`` in recent transformers (``past_key_values`` is deprecated there), else ``past_key_values``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def prefix_kv(cache) -> list[tuple]:
    """Each layer's (keys, values) of a filled ``DynamicCache``; (None, None) for layers the forward stopped below."""
    return [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in cache.layers]


def broadcast_cache(kv: list[tuple], rows: int, config):
    """A ``DynamicCache`` holding ``kv`` (one row) as ``rows`` broadcast rows."""
    from transformers import DynamicCache

    return DynamicCache([(None, None) if k is None else (k.expand(rows, *k.shape[1:]), v.expand(rows, *v.shape[1:]))
                         for k, v in kv], config=config)


def continuation_batch(continuations: Sequence[list[int]], pad_token_id: int, prefix_length: int,
                       device) -> dict[str, torch.Tensor]:
    """Left-padded continuations of a ``prefix_length``-token prefix: the attention mask covers the prefix too, and
    positions continue after it; padding is masked."""
    batch = left_pad(continuations, pad_token_id)
    attention = torch.cat([torch.ones((len(continuations), prefix_length), dtype=torch.long),
                           batch["attention_mask"]], 1)
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": attention.to(device),
            "position_ids": (batch["position_ids"] + prefix_length).to(device)}
