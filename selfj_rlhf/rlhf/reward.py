"""``SelfJReward``: the SELF-J judge as a TRL reward function (GRPO, RLOO, online DPO).

TRL 1.16 calls custom reward functions as
``reward_func(prompts=..., completions=..., completion_ids=..., **dataset_columns, trainer_state=...,
log_extra=..., log_metric=...)`` and expects one float (or None) per completion. Prompts and
completions are strings (standard format) or message lists (conversational format).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Any, Sequence

from ..judge.reward_signal import (JudgedItem, SelfJRewardConfig, judged_items, message_text, prompt_instruction,
                                   reward_values)
from ..serving.client import JudgeClient


class SelfJReward:
    """SELF-J expected-score reward for TRL trainers. Picklable; the judge is loaded on first call.

    Example::

        from trl import GRPOTrainer
        from selfj_rlhf import SelfJReward
        trainer = GRPOTrainer(model=..., reward_funcs=[SelfJReward(judge="selfj-smollm2-135m")], ...)
        # or share one judge server (``selfj serve``) between processes and nodes:
        trainer = GRPOTrainer(model=..., reward_funcs=[SelfJReward(judge_server_url="http://judge-host:5000")], ...)
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
        if self.config.judge_server_url:
            scored = self.client.score(*picked)
        else:
            details = self.judge.score_details(*picked, batch_size=self.config.judge_forward_size)
            scored = judged_items(details, picked[1], self.judge.tokenizer if self.config.length_penalty else None)
        return self._rewards(scored, keep, len(completions), kwargs.get("log_metric"))

    async def acall(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids=None,
                    **kwargs) -> list[float | None]:
        """``__call__`` as a coroutine: with ``server_url`` the request is awaited, without blocking the event
        loop; an in-process judge runs in a worker thread."""
        if not self.config.judge_server_url:
            import asyncio

            return await asyncio.to_thread(self.__call__, prompts, completions, completion_ids, **kwargs)
        keep, picked = self._judged_inputs(prompts, completions, kwargs)
        scored = await self.client.ascore(*picked)
        return self._rewards(scored, keep, len(completions), kwargs.get("log_metric"))

    def judge_scores(self, instructions: list[str], responses: list[str]) -> list[float]:
        """The judge's 0-9 scores of reference-free items, before any transform or length penalty (from the judge
        server when one is set): what a probe of the policy reads."""
        if self.config.judge_server_url:
            return [item.score for item in self.client.score(instructions, responses, None)]
        return self.judge.score(instructions, responses, batch_size=self.config.judge_forward_size)

    @property
    def client(self):
        if self._client is None:
            self._client = JudgeClient(self.config.judge_server_url, api_key=self.config.server_api_key,
                                       timeout_s=self.config.server_timeout_s,
                                       max_retries=self.config.server_max_retries,
                                       deadline_s=self.config.server_deadline_s)
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


# Ready instance for `trl grpo --reward_funcs selfj_rlhf.selfj_reward`: the shipped judge of the
# embedded model when present, otherwise zero-shot self-judging; loads lazily on the first call.
selfj_reward = SelfJReward()
