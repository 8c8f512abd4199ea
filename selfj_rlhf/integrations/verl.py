"""verl custom reward function backed by a ``selfj serve`` judge server.

verl calls ``compute_score(data_source, solution_str, ground_truth, extra_info, **reward_kwargs)`` once per
response (its ``NaiveRewardManager``), awaiting it when it is a coroutine. It passes the decoded response but not
the prompt, so the instruction is read from ``extra_info[prompt_key]``: put the instruction there when preparing
the parquet (verl's own data recipes keep the question in ``extra_info``). Launch::

    python -m verl.trainer.main_ppo ... \\
        reward.custom_reward_function.path=pkg://selfj_rlhf.integrations.verl \\
        reward.custom_reward_function.name=compute_score \\
        +reward.custom_reward_function.reward_kwargs.judge_url=http://JUDGE_HOST:5000

(older verl: ``custom_reward_function.*`` at the top level.) Concurrent calls are coalesced by the server's dynamic
batching, so the judge runs at a useful batch size although verl sends one response at a time.
"""

from __future__ import annotations

from typing import Any

# absolute imports: verl loads this file by path, outside its package
from selfj_rlhf.judge.reward_signal import prompt_instruction
from selfj_rlhf.serving.client import JudgeClient


async def compute_score(data_source: str | None = None, solution_str: str = "", ground_truth: Any = None,
                        extra_info: dict | None = None, *, judge_url: str, prompt_key: str = "question",
                        use_reference: bool = False, api_key: str | None = None, timeout_s: float = 300.0,
                        max_retries: int = 5, deadline_s: float | None = None, **unused: Any) -> dict:
    """The judge's reward for one verl response: ``{"score": the server's reward, "selfj_expected_digit": ...,
    "selfj_digit_mass": ..., ...}`` (the extra keys are the server's ``extra_logs``, logged by verl).

    Args:
        judge_url: the judge server (``http://host:port`` or its ``/get_reward`` URL).
        prompt_key: key of ``extra_info`` holding the instruction (a string, or a list of chat messages).
        use_reference: judge with the with-reference template against ``ground_truth``.
        api_key: the server's bearer token (default: the SELFJ_API_KEY environment variable).
        deadline_s: time budget of this reward, retries included; past it (or when the judge fails) this raises
            ``JudgeServerError``, which verl sees: a failed reward is never returned as a score of 0.
        unused: verl's other keyword arguments (``reward_router_address`` and the like), ignored.
    """
    extra_info = extra_info or {}
    if prompt_key not in extra_info:
        raise KeyError(f"extra_info has no '{prompt_key}' (the instruction); keys: {sorted(extra_info)}; set "
                       "reward_kwargs.prompt_key to the key that holds it")
    instruction = prompt_instruction(extra_info[prompt_key])
    reference = None
    if use_reference:
        if not isinstance(ground_truth, str) or not ground_truth.strip():
            raise ValueError(f"use_reference is set but ground_truth is {ground_truth!r}")
        reference = ground_truth
    client = JudgeClient(judge_url, api_key=api_key, timeout_s=timeout_s, max_retries=max_retries,
                         deadline_s=deadline_s)
    answer = await client.apost(client.payload([instruction], [solution_str],
                                               None if reference is None else [reference]))
    extra = {f"selfj_{name}": values[0] for name, values in answer["extra_logs"].items()}
    return {"score": answer["rewards"][0], **extra}
