"""Decoder-layer access for judges that read or train middle layers: the layer list, and a forward that stops
where the highest wanted layer's output is captured, so the layers above never run."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import ConfigError


class StopForward(Exception):
    """Raised by a forward hook once what it needs is captured (the layers above are not run)."""


def base_model(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model) -> torch.nn.ModuleList:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ConfigError(f"reading or training one layer needs a decoder with model.model.layers; "
                          f"{type(model).__name__} has none")
    return layers


def layer_input(model, index: int, **forward_kwargs) -> torch.Tensor:
    """The hidden states entering decoder layer ``index`` (0-based) in a forward of ``model.model`` that stops there:
    ``[batch, tokens, hidden]``."""
    captured = {}

    def grab(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]
        raise StopForward

    handle = decoder_layers(model)[index].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model.model(**forward_kwargs)
    except StopForward:
        pass
    finally:
        handle.remove()
    return captured["hidden"]


def layer_outputs(model, layers: Sequence[int], **forward_kwargs) -> list[torch.Tensor]:
    """Outputs of decoder layers ``layers`` (1-based, as in ``hidden_states[layer]``), each ``[batch, tokens,
    hidden]``, from one forward that runs no layer above the highest of them.

    A layer's output is captured as the input of the layer after it; the last layer's output is taken after the
    final norm, as transformers reports it.
    """
    base = base_model(model)
    blocks = decoder_layers(base)
    for layer in layers:
        if not 1 <= layer <= len(blocks):
            raise ConfigError(f"layer must be in 1..{len(blocks)}, got {layer}")
    top = max(layers)
    captured: dict[int, torch.Tensor] = {}

    def grabber(layer: int):
        def grab(module, args, kwargs):
            captured[layer] = args[0] if args else kwargs["hidden_states"]
            if layer == top:
                raise StopForward
        return grab

    handles = [blocks[layer].register_forward_pre_hook(grabber(layer), with_kwargs=True)
               for layer in set(layers) if layer < len(blocks)]
    try:
        output = base.model(**forward_kwargs)
        captured[len(blocks)] = output.last_hidden_state
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return [captured[layer] for layer in layers]

