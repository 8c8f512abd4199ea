"""How a judge's score becomes a reward: the reward options, the (prompt, completion) to instruction and text
extraction, the judged item and the per-call transforms. The in-process reward (``selfj_rlhf.rlhf.reward``) and the
judge server (``selfj_rlhf.serving.server``) share all of it, so both give the same reward for the same item."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..core.errors import ConfigError
from ..core.models import DEFAULT_POLICY
from .directory import OWN_SAMPLES, default_judge_for, warn_if_outside_role
from .options import JudgeArgs, deprecated, rename_deprecated
from .self_judge import SelfJudge


@dataclass
class SelfJRewardConfig(JudgeArgs):
    """Options of the SELF-J reward function: the judge's (``JudgeArgs``) and how a score becomes a reward.

    The judge defaults to the shipped judge of the embedded policy.
    """

    policy: str | None = field(default=None, metadata={
        "help": "The policy whose completions this reward scores: a judge trained for another policy's samples, or "
                "for other models' answers, warns once, naming the judge to use."})
    use_reference: bool = field(default=False, metadata={
        "help": "Score with the with-reference template using the dataset column named by `reference_column`."})
    reference_column: str = field(default="reference", metadata={"help": "Dataset column holding references."})
    transform: str = field(default="raw", metadata={
        "help": "raw: score in [0, 9]; centered: minus the call's mean; zscore: standardised within the call."})
    length_penalty: float = field(default=0.0, metadata={
        "help": "Subtracted per 100 completion tokens (judge tokenizer), to counter length hacking."})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), float32, bfloat16."})
    device: str | None = field(default=None, metadata={"help": "Judge device; default cuda if available, else cpu."})
    quantize: str | None = field(default=None, metadata={"help": "int8: int8 dynamic quantization of the judge (CPU)."})
    server_api_key: str | None = field(default=None, metadata={
        "help": "Bearer token of the judge server (default: the SELFJ_API_KEY environment variable)."})
    server_timeout_s: float = field(default=300.0, metadata={"help": "Timeout of one request to the judge server."})
    server_max_retries: int = field(default=5, metadata={
        "help": "Retries of a request that the server answers 502/503/504 or that fails to connect (a jittered pause "
                "from about 1 s, doubling, at least the server's Retry-After)."})
    server_deadline_s: float | None = field(default=None, metadata={
        "help": "Time budget of one reward call to the judge server, retries included; past it the call raises "
                "(JudgeServerError), never a reward of 0. Unset: bounded by the retries only."})
    template: str | None = deprecated("judge_template")
    batch_size: int | None = deprecated("judge_batch_size")
    max_length: int | None = deprecated("max_judge_length")
    server_url: str | None = deprecated("judge_server_url")

    def load_judge(self):
        """The configured ``SelfJudge``, with length control as ``length_control`` asks."""
        return SelfJudge.from_pretrained(self.judge, template=self.judge_template, dtype=self.dtype, device=self.device,
                                         max_length=self.max_judge_length, quantize=self.quantize,
                                         length_control=self.length_control)

    def __post_init__(self):
        rename_deprecated(self, RENAMED_REWARD_OPTIONS)
        super().__post_init__()
        if self.judge is None:
            self.judge = default_judge_for(self.policy or DEFAULT_POLICY)
        if not self.judge_server_url:
            warn_if_outside_role(self.judge, OWN_SAMPLES, self.policy, where="SelfJReward")
        if self.transform not in ("raw", "centered", "zscore"):
            raise ConfigError(f"transform must be raw, centered or zscore, got '{self.transform}'")
        if not math.isfinite(self.length_penalty) or self.length_penalty < 0:
            raise ConfigError(f"length_penalty must be a finite number >= 0, got {self.length_penalty}")
        if self.server_max_retries < 0 or not self.server_timeout_s > 0:
            raise ConfigError("server_max_retries must be >= 0 and server_timeout_s > 0")
        if self.server_deadline_s is not None and not self.server_deadline_s > 0:
            raise ConfigError(f"server_deadline_s must be > 0, got {self.server_deadline_s}")


# the reward's own names before the judge options were declared once (JudgeArgs)
RENAMED_REWARD_OPTIONS = {"template": "judge_template", "batch_size": "judge_batch_size",
                          "max_length": "max_judge_length", "server_url": "judge_server_url"}


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
