"""The echo guard: an answer that only copies its instruction back scores the bottom of the scale.

An answer made of the question's own words is the most "relevant" text of all, so a head that reads the answer
beside its question, and a relevance gate that rewards answers the question makes likely, both pay for it: the pool
judge v8 scored the question echoed back at or above LLMBar's preferred answer on 20 % of 100 questions it never
saw (evals/results/probe_v8.md), after training on echoed halves of its training questions. Training rows teach
what a copy of a seen question looks like; they do not reach every new question. The copy itself is easy to see
without a model:

    copied   = share of the answer's distinct word n-grams that occur in the instruction
    coverage = share of the instruction's distinct word n-grams that occur in the answer

An answer with both at or above their thresholds (by default 0.9 and 0.9 on word 3-grams, case kept) restates the
whole instruction and adds next to nothing, and it scores ``floor``. Both conditions are needed: an answer that
quotes part of its instruction (an extraction, a sorted list, a corrected sentence) covers little of it, and an
answer that restates the question and then answers it adds n-grams of its own. Case is kept so that an answer that
upper-cases or title-cases the text it was asked to transform is not a copy. On 18,518 honest answers of the project's
data (arena-bench, LLMBar, FLASK, GPTeacher and GSM8K references) the default thresholds fire on 5, each graded 1
or 5 by GPT-4 or the answer LLMBar does not prefer (evals/results/echo_guard.md).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from ..core.errors import ConfigError

KIND = "instruction_echo"
WORD = re.compile(r"\w+")


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = WORD.findall(text)
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@dataclass
class EchoGuard:
    """Scores ``floor`` for an answer that copies its instruction back (see the module docstring)."""

    n: int = 3
    min_copied: float = 0.9
    min_coverage: float = 0.9
    floor: float = 0.0

    def __post_init__(self):
        if self.n < 1:
            raise ConfigError(f"echo guard n must be >= 1, got {self.n}")
        for name in ("min_copied", "min_coverage"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"echo guard {name} must be in (0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.floor <= 9.0:
            raise ConfigError(f"echo guard floor must be on the 0-9 scale, got {self.floor}")

    def shares(self, instruction: str, response: str) -> tuple[float, float]:
        """(copied, coverage) of ``response`` against ``instruction``; (0, 0) when either has no n-gram."""
        answer, question = word_ngrams(response, self.n), word_ngrams(instruction, self.n)
        if not answer or not question:
            return 0.0, 0.0
        common = len(answer & question)
        return common / len(answer), common / len(question)

    def echoes(self, instruction: str, response: str) -> bool:
        copied, coverage = self.shares(instruction, response)
        return copied >= self.min_copied and coverage >= self.min_coverage

    def to_dict(self) -> dict:
        return {"kind": KIND, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "EchoGuard":
        if data.get("kind") != KIND:
            raise ConfigError(f"unknown echo guard kind {data.get('kind')!r}")
        return cls(n=int(data["n"]), min_copied=float(data["min_copied"]), min_coverage=float(data["min_coverage"]),
                   floor=float(data["floor"]))
