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
    """``score = weight . state + bias`` on the raw (unstandardised) state of decoder layer ``layer``."""

    def __init__(self, hidden_size: int, layer: int):
        super().__init__()
        self.layer = layer
        self.linear = torch.nn.Linear(hidden_size, 1)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.linear(states.float()).squeeze(-1)

    def predict(self, states: np.ndarray) -> np.ndarray:
        """Scores of cached ``[N, hidden]`` states (a numpy array), as ``forward`` gives them."""
        weight = self.linear.weight.detach().cpu().numpy()[0].astype(np.float64)
        return np.asarray(states, dtype=np.float64) @ weight + self.linear.bias.item()

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        save_file({"weight": self.linear.weight.detach().contiguous(), "bias": self.linear.bias.detach().contiguous()},
                  str(Path(directory) / HEAD_FILE))

    @classmethod
    def load(cls, directory: str | Path, layer: int) -> "ScalarHead":
        from safetensors.torch import load_file

        tensors = load_file(str(Path(directory) / HEAD_FILE))
        head = cls(tensors["weight"].shape[1], layer)
        head.linear.weight.data.copy_(tensors["weight"])
        head.linear.bias.data.copy_(tensors["bias"])
        return head.eval()
