"""Decoder-layer access for judges that read or train one middle layer: the layer list, and a forward that stops
where a layer's input is captured, so the layers above never run."""

from __future__ import annotations

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


def layer_output(model, layer: int, **forward_kwargs) -> torch.Tensor:
    """Output of decoder layer ``layer`` (1-based, as in ``hidden_states[layer]``), running no layer above it.

    The last layer's output is taken after the final norm, as transformers reports it.
    """
    base = base_model(model)
    layers = decoder_layers(base)
    if not 1 <= layer <= len(layers):
        raise ConfigError(f"layer must be in 1..{len(layers)}, got {layer}")
    if layer == len(layers):
        return base.model(**forward_kwargs).last_hidden_state
    return layer_input(base, layer, **forward_kwargs)
