"""The judge protocols of TRL's judges API, which TRL removed in 1.16: ``SelfJudge`` implements both, so code
written against ``trl.BasePairwiseJudge`` / ``trl.BaseRankJudge`` keeps working with it."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class PairwiseJudge(Protocol):
    """TRL's last pairwise judge signature: index of the preferred completion per prompt."""

    def judge(self, prompts: list[str], completions: list[list[str]], shuffle_order: bool = True) -> list[int]: ...


@runtime_checkable
class RankJudge(Protocol):
    """TRL's last rank judge signature (as ``rank`` here): completion indices, best first."""

    def rank(self, prompts: list[str], completions: list[list[str]], shuffle_order: bool = True) -> list[list[int]]: ...
