"""selfj-rlhf: turn an instruction-following LLM into its own reward model with SELF-J."""

from .errors import ConfigError, DigitTokenError, ModelSpecError, RecordError, SelfJError
from .judge import ScoreDetails, SelfJudge
from .reward import SelfJReward, SelfJRewardConfig
from .templates import TEMPLATES, JudgeTemplate

__version__ = "0.1.0"

__all__ = ["SelfJudge", "ScoreDetails", "SelfJReward", "SelfJRewardConfig", "JudgeTemplate", "TEMPLATES",
           "SelfJError", "ConfigError", "ModelSpecError", "DigitTokenError", "RecordError", "__version__"]
