"""selfj-rlhf: turn an instruction-following LLM into its own reward model with SELF-J."""

from .core.errors import ConfigError, DigitTokenError, ModelSpecError, RecordError, SelfJError
from .judge.reward_signal import SelfJRewardConfig
from .judge.self_judge import ScoreDetails, SelfJudge
from .judge.templates import TEMPLATES, JudgeTemplate
from .rlhf.reward import SelfJReward, selfj_reward

__version__ = "0.1.0"

__all__ = ["SelfJudge", "ScoreDetails", "SelfJReward", "SelfJRewardConfig", "selfj_reward", "JudgeTemplate", "TEMPLATES",
           "SelfJError", "ConfigError", "ModelSpecError", "DigitTokenError", "RecordError", "__version__"]
