"""Train only the top ``k`` decoder layers of a judge on cached inputs.

LoRA on the upper layers already limits the backward pass, but every step still runs the frozen lower layers
forward. With ``train_top_layers: k`` the lower layers run once per prompt, before training: their output
(the input of layer ``N - k``) is cached, and the Trainer then runs a model made of the top ``k`` layers,
the final norm and the LM head on ``inputs_embeds``. On a CPU that makes an epoch several times cheaper, so
the judge gets the many epochs a small label set needs. The adapter is saved with the full model's layer
indices, so the judge directory is the same as after ordinary training.

Meant for single-process runs of small models (the cache lives in memory: prompts x tokens x hidden size
floats); on GPUs, train LoRA through the whole model instead.
"""

from __future__ import annotations

import torch

from ..core.errors import ConfigError
from ..core.layers import decoder_layers, layer_input
from ..core.tensors import left_pad, left_padding

# largest |logit| difference allowed between the top-layer model on cached inputs and the full model
SPLIT_CHECK_TOLERANCE = 1e-3


@torch.no_grad()
def cache_layer_inputs(model, sequences: list[list[int]], layer: int, pad_token_id: int,
                       batch_size: int = 8, progress: bool = True) -> list[torch.Tensor]:
    """The hidden states entering decoder layer ``layer`` for each token sequence: ``[len(seq), hidden]`` each."""
    from tqdm.auto import tqdm

    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths: little padding
    out: list[torch.Tensor | None] = [None] * len(sequences)
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(order), batch_size), desc=f"cache layer {layer} inputs", disable=not progress):
        chunk = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in left_pad([sequences[i] for i in chunk], pad_token_id).items()}
        hidden = layer_input(model, layer, **batch, use_cache=False).float().cpu()
        for row, index in enumerate(chunk):
            out[index] = hidden[row, hidden.shape[1] - len(sequences[index]):].clone()
    return out


def frozen_layer_count(model, k: int) -> int:
    """How many lower layers stay frozen (and are cached) when the top ``k`` are trained; checks ``k``."""
    total = len(decoder_layers(model))
    if k < 1:
        raise ConfigError(f"train_top_layers must be >= 1 (0 turns it off), got {k}")
    if k >= total:
        raise ConfigError(f"train_top_layers={k} leaves no frozen layer to cache (the model has {total})")
    return total - k


def keep_top_layers(model, k: int):
    """Turn ``model`` (in place) into its top ``k`` decoder layers + final norm + head; returns it."""
    start = frozen_layer_count(model, k)
    model.model.layers = torch.nn.ModuleList(list(decoder_layers(model))[start:])
    for index, layer in enumerate(model.model.layers):
        if hasattr(getattr(layer, "self_attn", None), "layer_idx"):
            layer.self_attn.layer_idx = index  # KV-cache slot; unused in training, kept consistent
    model.config.num_hidden_layers = k
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = list(model.config.layer_types)[start:]
    return model


@torch.no_grad()
def check_split(full_logits: torch.Tensor, top_model, cached: torch.Tensor) -> None:
    """The top-layer model on the cached input must reproduce the full model's last logits (an architecture
    that transforms ``inputs_embeds`` itself, e.g. by scaling, would silently train something else)."""
    length = cached.shape[0]
    logits = top_model(inputs_embeds=cached[None], attention_mask=torch.ones(1, length, dtype=torch.long),
                       position_ids=torch.arange(length)[None], logits_to_keep=1, use_cache=False).logits[0, -1]
    diff = float((logits.float() - full_logits.float()).abs().max())
    if diff > SPLIT_CHECK_TOLERANCE:
        raise ConfigError(f"train_top_layers: the top layers on cached inputs differ from the full model by {diff:.2e} "
                          "(this architecture changes inputs_embeds); train without train_top_layers")


class CachedDistillCollator:
    """Left-pads cached teacher and student hidden states (zeros under the mask) for the top-layer model."""

    def __init__(self, teacher: list[torch.Tensor] | None, student: list[torch.Tensor]):
        self.teacher = teacher  # None: a student-only run
        self.student = student

    @staticmethod
    def _pad(states: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        padding = left_padding([s.shape[0] for s in states])  # the same positions as the token-id prompts
        width = padding["attention_mask"].shape[1]
        embeds = states[0].new_zeros(len(states), width, states[0].shape[1])
        for row, s in enumerate(states):
            embeds[row, width - s.shape[0]:] = s
        return {"inputs_embeds": embeds, **padding}

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        indices = [f["index"] for f in features]
        batch = {f"student_{k}": v for k, v in self._pad([self.student[i] for i in indices]).items()}
        if self.teacher is not None:
            batch.update({f"teacher_{k}": v for k, v in self._pad([self.teacher[i] for i in indices]).items()})
        return {**batch, "labels": torch.tensor([f["label"] for f in features], dtype=torch.long)}


def full_model_state_dict(top_state: dict[str, torch.Tensor], offset: int) -> dict[str, torch.Tensor]:
    """Rename ``layers.<i>.`` to ``layers.<i + offset>.`` in adapter weights of the top-layer model."""
    import re

    pattern = re.compile(r"(\.layers\.)(\d+)(\.)")
    return {pattern.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + offset}{m.group(3)}", name, count=1): value
            for name, value in top_state.items()}
