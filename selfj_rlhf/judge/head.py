"""The inference half of a scalar judge head: the head itself, its score map onto 0-9 and its length control.

Training lives in ``selfj_rlhf.training.scalar_head``; a judge directory stores what is defined here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.errors import ConfigError


HEAD_FILE = "scalar_head.safetensors"


@dataclass
class LengthControl:
    """``score - slope * (log(1 + tokens) - center)``: the score with its log-length trend removed."""

    slope: float
    center: float

    @classmethod
    def fit(cls, labels: Sequence[float], response_tokens: Sequence[int]) -> "LengthControl":
        x = np.log1p(np.asarray(response_tokens, dtype=np.float64))
        y = np.asarray(labels, dtype=np.float64)
        if len(x) < 2 or x.std() == 0:
            raise ValueError("length control needs at least two rows of different lengths")
        slope = float(np.cov(x, y, bias=True)[0, 1] / x.var())
        return cls(slope=slope, center=float(x.mean()))

    def apply(self, scores, response_tokens):
        return np.asarray(scores, dtype=np.float64) - self.slope * (
            np.log1p(np.asarray(response_tokens, dtype=np.float64)) - self.center)

    def to_dict(self) -> dict:
        return {"kind": "log_length_linear", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "LengthControl":
        if data.get("kind") != "log_length_linear":
            raise ConfigError(f"unknown length_control kind {data.get('kind')!r}")
        return cls(slope=float(data["slope"]), center=float(data["center"]))


@dataclass
class ScoreMap:
    """``9 * sigmoid((raw - center) / scale)``: a scalar head's unbounded score put on the 0-9 scale.

    Strictly increasing, so it never changes which of two answers ranks higher; fitted at training by least
    squares to the teacher's labels, so a mapped score reads like a label. The head's own output stays available
    as ``ScoreDetails.raw_score``.
    """

    center: float
    scale: float

    @classmethod
    def fit(cls, raw: Sequence[float], labels: Sequence[float]) -> "ScoreMap":
        from scipy.optimize import least_squares
        from scipy.special import expit

        x = np.asarray(raw, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64)
        if len(x) < 2 or x.std() == 0:
            raise ValueError("a score map needs at least two rows with different scores")

        def residuals(params):
            return 9.0 * expit((x - params[0]) / np.exp(params[1])) - y

        # start from the line through the label mean with slope 1 (a head already on the label scale)
        fit = least_squares(residuals, x0=[float(y.mean()), np.log(2.25)])
        return cls(center=float(fit.x[0]), scale=float(np.exp(fit.x[1])))

    def apply(self, raw) -> np.ndarray:
        from scipy.special import expit

        return 9.0 * expit((np.asarray(raw, dtype=np.float64) - self.center) / self.scale)

    def to_dict(self) -> dict:
        return {"kind": "logistic", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "ScoreMap":
        if data.get("kind") != "logistic":
            raise ConfigError(f"unknown score_map kind {data.get('kind')!r}")
        scale = float(data["scale"])
        if not scale > 0:
            raise ConfigError(f"score_map scale must be > 0, got {scale}")
        return cls(center=float(data["center"]), scale=scale)


class ScalarHead(torch.nn.Module):
    """``score = weight . states + bias`` on the raw (unstandardised) states of decoder layers ``layers``,
    concatenated in that order: one layer, or several (a layer ensemble, ``average``, stored as one linear map)."""

    def __init__(self, hidden_size: int, layers: int | Sequence[int]):
        super().__init__()
        self.layers = (layers,) if isinstance(layers, int) else tuple(int(layer) for layer in layers)
        if not self.layers:
            raise ConfigError("a scalar head reads at least one layer")
        self.linear = torch.nn.Linear(hidden_size * len(self.layers), 1)

    @classmethod
    def average(cls, heads: Sequence["ScalarHead"]) -> "ScalarHead":
        """The mean of several heads' scores, as one head over their layers' states concatenated in order."""
        layers = [layer for head in heads for layer in head.layers]
        if len(set(layers)) != len(layers):
            raise ConfigError(f"averaged heads must read distinct layers, got {layers}")
        merged = cls(heads[0].linear.in_features // len(heads[0].layers), layers)
        with torch.no_grad():
            merged.linear.weight.copy_(torch.cat([head.linear.weight for head in heads], 1) / len(heads))
            merged.linear.bias.copy_(sum(head.linear.bias for head in heads) / len(heads))
        return merged.eval()

    def inputs(self, states: np.ndarray) -> np.ndarray:
        """This head's input from cached ``[N, layers + 1, hidden]`` states (``selfj_rlhf.judge.features``)."""
        return np.concatenate([states[:, layer, :] for layer in self.layers], axis=1)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.linear(states.float()).squeeze(-1)

    def predict(self, states: np.ndarray) -> np.ndarray:
        """Scores of cached ``[N, hidden x len(layers)]`` states (a numpy array), as ``forward`` gives them."""
        weight = self.linear.weight.detach().cpu().numpy()[0].astype(np.float64)
        return np.asarray(states, dtype=np.float64) @ weight + self.linear.bias.item()

    def config(self) -> dict:
        """The ``head`` entry of ``selfj_config.json`` (``layer`` for one layer, as judges have always stored it)."""
        if len(self.layers) == 1:
            return {"kind": "scalar", "layer": self.layers[0]}
        return {"kind": "scalar", "layers": list(self.layers)}

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        save_file({"weight": self.linear.weight.detach().contiguous(), "bias": self.linear.bias.detach().contiguous()},
                  str(Path(directory) / HEAD_FILE))

    @classmethod
    def load(cls, directory: str | Path, config: dict) -> "ScalarHead":
        """The head saved in ``directory``, reading the layers that its ``config`` entry (see ``config``) names."""
        from safetensors.torch import load_file

        layers = config["layers"] if "layers" in config else [config["layer"]]
        tensors = load_file(str(Path(directory) / HEAD_FILE))
        head = cls(tensors["weight"].shape[1] // len(layers), layers)
        head.linear.weight.data.copy_(tensors["weight"])
        head.linear.bias.data.copy_(tensors["bias"])
        return head.eval()
