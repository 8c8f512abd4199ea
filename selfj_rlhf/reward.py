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
from .judge import LENGTH_CONTROL_HELP
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
    length_control: bool | None = field(default=None, metadata={"help": LENGTH_CONTROL_HELP})
    server_url: str | None = field(default=None, metadata={
        "help": "Score through a `selfj serve` judge server at this URL (e.g. http://127.0.0.1:5000) instead of "
                "loading the judge in this process; the judge options above are then the server's."})
    server_api_key: str | None = field(default=None, metadata={
        "help": "Bearer token of the judge server (default: the SELFJ_API_KEY environment variable)."})
    server_timeout_s: float = field(default=300.0, metadata={"help": "Timeout of one request to the judge server."})
    server_max_retries: int = field(default=5, metadata={
        "help": "Retries of a request that the server answers 503/504 or that fails to connect (1 s apart, doubling)."})

    def load_judge(self):
        """The configured ``SelfJudge``, with length control as ``length_control`` asks."""
        from .judge import SelfJudge

        return SelfJudge.from_pretrained(self.judge, template=self.template, dtype=self.dtype, device=self.device,
                                         max_length=self.max_length, quantize=self.quantize,
                                         length_control=self.length_control)

    def __post_init__(self):
        if self.transform not in ("raw", "centered", "zscore"):
            raise ConfigError(f"transform must be raw, centered or zscore, got '{self.transform}'")
        if not math.isfinite(self.length_penalty) or self.length_penalty < 0:
            raise ConfigError(f"length_penalty must be a finite number >= 0, got {self.length_penalty}")
        if self.server_max_retries < 0 or not self.server_timeout_s > 0:
            raise ConfigError("server_max_retries must be >= 0 and server_timeout_s > 0")


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
        # or share one judge server (``selfj serve``) between processes and nodes:
        trainer = GRPOTrainer(model=..., reward_funcs=[SelfJReward(server_url="http://judge-host:5000")], ...)
    """

    def __init__(self, config: SelfJRewardConfig | None = None, *, judge_instance=None, **overrides):
        self.config = config or SelfJRewardConfig(**overrides)
        if config is not None and overrides:
            self.config = SelfJRewardConfig(**{**asdict(config), **overrides})
        self.__name__ = "selfj"
        self._judge = judge_instance
        self._client = None

    @property
    def judge(self):
        if self._judge is None:
            self._judge = self.config.load_judge()
        return self._judge

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_judge"] = None  # workers / checkpoints reload the judge instead of pickling a model
        state["_client"] = None  # and open their own connections to a judge server
        return state

    def _judged_inputs(self, prompts, completions, kwargs) -> tuple[list[int], tuple]:
        """(indices of the rows to judge, (instructions, responses, references) of those rows): a row with an
        empty reference under ``use_reference`` is not judged (its reward is None)."""
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
        return keep, ([instructions[i] for i in keep], [responses[i] for i in keep],
                      None if references is None else [references[i] for i in keep])

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids=None, **kwargs) -> list[float | None]:
        keep, picked = self._judged_inputs(prompts, completions, kwargs)
        if self.config.server_url:
            scored = self.client.score(*picked)
        else:
            details = self.judge.score_details(*picked, batch_size=self.config.batch_size)
            scored = judged_items(details, picked[1], self.judge.tokenizer if self.config.length_penalty else None)
        return self._rewards(scored, keep, len(completions), kwargs.get("log_metric"))

    async def acall(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids=None,
                    **kwargs) -> list[float | None]:
        """``__call__`` as a coroutine: with ``server_url`` the request is awaited, without blocking the event
        loop; an in-process judge runs in a worker thread."""
        if not self.config.server_url:
            import asyncio

            return await asyncio.to_thread(self.__call__, prompts, completions, completion_ids, **kwargs)
        keep, picked = self._judged_inputs(prompts, completions, kwargs)
        scored = await self.client.ascore(*picked)
        return self._rewards(scored, keep, len(completions), kwargs.get("log_metric"))

    @property
    def client(self):
        if self._client is None:
            from .remote import JudgeClient

            self._client = JudgeClient(self.config.server_url, api_key=self.config.server_api_key,
                                       timeout_s=self.config.server_timeout_s,
                                       max_retries=self.config.server_max_retries)
        return self._client

    def _rewards(self, scored: list["JudgedItem"], keep: list[int], count: int, log_metric) -> list[float | None]:
        values = reward_values(scored, self.config.transform, self.config.length_penalty)
        rewards: list[float | None] = [None] * count  # None: no reference to judge this row against
        for value, index in zip(values, keep):
            rewards[index] = value
        if log_metric is not None and scored:
            log_metric("selfj/score_mean", statistics.fmean(s.score for s in scored))
            log_metric("selfj/score_std", statistics.pstdev(s.score for s in scored))
            log_metric("selfj/digit_mass", statistics.fmean(s.digit_mass for s in scored))
            log_metric("selfj/truncated_frac", statistics.fmean(s.truncated for s in scored))
        return rewards


class AsyncSelfJReward(SelfJReward):
    """``SelfJReward`` whose call is a coroutine: TRL's GRPO trainer awaits async reward functions together, so a
    remote judge scores while other reward functions run."""

    async def __call__(self, prompts, completions, completion_ids=None, **kwargs):  # type: ignore[override]
        return await self.acall(prompts, completions, completion_ids, **kwargs)


@dataclass
class JudgedItem:
    """What a reward needs of one judged response: its expected digit, the judge's probability mass on digits,
    whether it was truncated, and its length in judge tokens (0 when no length penalty needs it)."""

    score: float
    digit_mass: float
    truncated: bool
    response_tokens: int = 0


def judged_items(details, responses: Sequence[str], tokenizer=None) -> list[JudgedItem]:
    """``ScoreDetails`` as ``JudgedItem``s; response lengths are counted when a tokenizer is given."""
    return [JudgedItem(d.score, d.digit_mass, bool(d.truncated),
                       len(tokenizer.encode(r, add_special_tokens=False)) if tokenizer is not None else 0)
            for d, r in zip(details, responses)]


def reward_values(scored: Sequence[JudgedItem], transform: str = "raw", length_penalty: float = 0.0) -> list[float]:
    """Rewards of one call: the transformed scores minus ``length_penalty`` per 100 response tokens."""
    values = [s.score for s in scored]
    if transform != "raw" and values:
        mean = statistics.fmean(values)
        std = statistics.pstdev(values) if transform == "zscore" else None
        values = [v - mean if std is None else (v - mean) / (std + 1e-6) for v in values]
    if length_penalty:
        values = [v - length_penalty * s.response_tokens / 100 for v, s in zip(values, scored)]
    return values


# Ready instance for `trl grpo --reward_funcs selfj_rlhf.reward.selfj_reward`: the shipped judge of the
# embedded model when present, otherwise zero-shot self-judging; loads lazily on the first call.
selfj_reward = SelfJReward()
