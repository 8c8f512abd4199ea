"""``SelfJReward``: the SELF-J judge as a TRL reward function (GRPO, RLOO, online DPO).

TRL 1.16 calls custom reward functions as
``reward_func(prompts=..., completions=..., completion_ids=..., **dataset_columns, trainer_state=...,
log_extra=..., log_metric=...)`` and expects one float (or None) per completion. Prompts and
completions are strings (standard format) or message lists (conversational format).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

from .errors import ConfigError
from .models import DEFAULT_POLICY
from .shipped import default_judge_for


@runtime_checkable
class PairwiseJudge(Protocol):
    """TRL's last pairwise judge signature: index of the preferred completion per prompt."""

    def judge(self, prompts: list[str], completions: list[list[str]], shuffle_order: bool = True) -> list[int]: ...


@runtime_checkable
class RankJudge(Protocol):
    """TRL's last rank judge signature (as ``rank`` here): completion indices, best first."""

    def rank(self, prompts: list[str], completions: list[list[str]], shuffle_order: bool = True) -> list[list[int]]: ...


@dataclass
class SelfJRewardConfig:
    """Options of the SELF-J reward function."""

    judge: str = field(default_factory=lambda: default_judge_for(DEFAULT_POLICY),
                       metadata={"help": "Judge: model spec (zero-shot self-judge), judge directory or shipped alias."})
    template: str | None = field(default=None, metadata={"help": "Judge template preset; default: the judge's own."})
    use_reference: bool = field(default=False, metadata={
        "help": "Score with the with-reference template using the dataset column named by `reference_column`."})
    reference_column: str = field(default="reference", metadata={"help": "Dataset column holding references."})
    transform: str = field(default="raw", metadata={
        "help": "raw: score in [0, 9]; centered: minus the call's mean; zscore: standardised within the call."})
    length_penalty: float = field(default=0.0, metadata={
        "help": "Subtracted per 100 completion tokens (judge tokenizer), to counter length hacking."})
    batch_size: int = field(default=8, metadata={"help": "Judge batch size."})
    max_length: int = field(default=2048, metadata={"help": "Longest judge prompt; longer responses are truncated."})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), float32, bfloat16."})
    device: str | None = field(default=None, metadata={"help": "Judge device; default cuda if available, else cpu."})
    quantize: str | None = field(default=None, metadata={"help": "int8: int8 dynamic quantization of the judge (CPU)."})

    def __post_init__(self):
        if self.transform not in ("raw", "centered", "zscore"):
            raise ConfigError(f"transform must be raw, centered or zscore, got '{self.transform}'")
        if not math.isfinite(self.length_penalty) or self.length_penalty < 0:
            raise ConfigError(f"length_penalty must be a finite number >= 0, got {self.length_penalty}")


def message_text(value: Any) -> str:
    """Text of a completion/prompt in standard (str) or conversational (list of messages) format."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        return "\n".join(_content_text(m["content"]) for m in value)
    raise TypeError(f"expected a string or a list of messages, got {type(value).__name__}")


def prompt_instruction(prompt: Any) -> str:
    """The instruction to judge against: the prompt itself, or the conversation without system turns
    (a single user turn gives just its content)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        turns = [m for m in prompt if m["role"] != "system"]
        if len(turns) == 1:
            return _content_text(turns[0]["content"])
        return "\n\n".join(f"{m['role'].capitalize()}: {_content_text(m['content'])}" for m in turns)
    raise TypeError(f"expected a prompt string or a list of messages, got {type(prompt).__name__}")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal-style [{"type": "text", "text": ...}]
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


class SelfJReward:
    """SELF-J expected-score reward for TRL trainers. Picklable; the judge is loaded on first call.

    Example::

        from trl import GRPOTrainer
        from selfj_rlhf import SelfJReward
        trainer = GRPOTrainer(model=..., reward_funcs=[SelfJReward(judge="selfj-smollm2-135m")], ...)
    """

    def __init__(self, config: SelfJRewardConfig | None = None, *, judge_instance=None, **overrides):
        self.config = config or SelfJRewardConfig(**overrides)
        if config is not None and overrides:
            self.config = SelfJRewardConfig(**{**asdict(config), **overrides})
        self.__name__ = "selfj"
        self._judge = judge_instance

    @property
    def judge(self):
        if self._judge is None:
            from .judge import SelfJudge

            self._judge = SelfJudge.from_pretrained(self.config.judge, template=self.config.template,
                                                    dtype=self.config.dtype, device=self.config.device,
                                                    max_length=self.config.max_length, quantize=self.config.quantize)
        return self._judge

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_judge"] = None  # workers / checkpoints reload the judge instead of pickling a model
        return state

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids=None, **kwargs) -> list[float | None]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        instructions = [prompt_instruction(p) for p in prompts]
        responses = [message_text(c) for c in completions]
        references: list[str | None] | None = None
        if self.config.use_reference:
            column = kwargs.get(self.config.reference_column)
            if column is None:
                raise KeyError(f"use_reference is set but the dataset has no '{self.config.reference_column}' column")
            references = [r if isinstance(r, str) and r.strip() else None for r in column]
        keep = [i for i in range(len(responses)) if references is None or references[i] is not None]
        details = self.judge.score_details([instructions[i] for i in keep], [responses[i] for i in keep],
                                           None if references is None else [references[i] for i in keep],
                                           batch_size=self.config.batch_size)
        raw = [d.score for d in details]
        values = self._transform(raw)
        if self.config.length_penalty:
            tokenizer = self.judge.tokenizer
            values = [v - self.config.length_penalty * len(tokenizer.encode(responses[i], add_special_tokens=False)) / 100
                      for v, i in zip(values, keep)]
        rewards: list[float | None] = [None] * len(responses)  # None: no reference to judge this row against
        for value, index in zip(values, keep):
            rewards[index] = value
        log_metric = kwargs.get("log_metric")
        if log_metric is not None and details:
            log_metric("selfj/score_mean", statistics.fmean(raw))
            log_metric("selfj/score_std", statistics.pstdev(raw))
            log_metric("selfj/digit_mass", statistics.fmean(d.digit_mass for d in details))
            log_metric("selfj/truncated_frac", statistics.fmean(d.truncated for d in details))
        return rewards

    def _transform(self, scores: list[float]) -> list[float]:
        if self.config.transform == "raw" or not scores:
            return scores
        mean = statistics.fmean(scores)
        if self.config.transform == "centered":
            return [s - mean for s in scores]
        std = statistics.pstdev(scores)
        return [(s - mean) / (std + 1e-6) for s in scores]


# Ready instance for `trl grpo --reward_funcs selfj_rlhf.reward.selfj_reward`: the shipped judge of the
# embedded model when present, otherwise zero-shot self-judging; loads lazily on the first call.
selfj_reward = SelfJReward()
