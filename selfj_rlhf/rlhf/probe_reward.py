"""The reward on a fixed probe set during online RL: is the policy getting better, or only its own prompts' reward?

A GRPO step's reward compares whatever prompts the step drew, so a rising curve can be the prompts' luck. Every
``every`` optimizer steps (and when training starts), ``ProbeRewardCallback`` answers the same probe prompts greedily
with the policy being trained and scores the answers with the reward's judge; it appends the step, the mean score and
the mean answer length (a reward that prefers short answers shows here first) to ``probe_reward.jsonl`` in the run's
output folder. A run resumed after a kill keeps the rows already written (one per step).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Callable, Sequence

from transformers import TrainerCallback

from ..core.generation import generate_greedy_batch
from ..core.io import ShardWriter, read_shards

PROBE_FILE = "probe_reward.jsonl"


class ProbeRewardCallback(TrainerCallback):
    """Greedy answers to ``instructions`` every ``every`` steps, scored by ``score(instructions, answers)``."""

    def __init__(self, instructions: Sequence[str], score: Callable[[list[str], list[str]], list[float]], tokenizer,
                 output_dir: str | Path, *, every: int, max_new_tokens: int, batch_size: int = 8):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.instructions = list(instructions)
        self.score = score
        self.tokenizer = tokenizer
        self.path = Path(output_dir) / PROBE_FILE
        self.every, self.max_new_tokens, self.batch_size = every, max_new_tokens, batch_size

    def measured_steps(self) -> set[int]:
        return {int(step) for step in read_shards(self.path.parent, PROBE_FILE, key="step")}

    def probe(self, model, step: int) -> dict:
        """One probe row: the policy's greedy answers at ``step`` and the judge's scores of them."""
        was_training = model.training
        model.eval()  # no dropout in the answers
        try:
            answers = [answer for start in range(0, len(self.instructions), self.batch_size)
                       for answer in generate_greedy_batch(model, self.tokenizer,
                                                           self.instructions[start:start + self.batch_size],
                                                           max_new_tokens=self.max_new_tokens)]
        finally:
            model.train(was_training)
        scores = [float(s) for s in self.score(self.instructions, [a["text"] for a in answers])]
        return {"step": step, "score_mean": statistics.fmean(scores),
                "tokens_mean": statistics.fmean(a["num_tokens"] for a in answers),
                "cut_at_cap": statistics.fmean(not a["finished"] for a in answers),
                "scores": scores, "tokens": [a["num_tokens"] for a in answers]}

    def _maybe_probe(self, state, model) -> None:
        step = state.global_step
        if model is None or step % self.every or step in self.measured_steps():
            return
        row = self.probe(model, step)  # every process generates: sharded weights need all ranks in the forward
        if state.is_world_process_zero:
            with ShardWriter(self.path) as writer:
                writer.write(row)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._maybe_probe(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._maybe_probe(state, model)


def read_probe_rewards(output_dir: str | Path) -> list[dict]:
    """The probe rows of a run, by step."""
    return sorted(read_shards(output_dir, PROBE_FILE, key="step").values(), key=lambda row: row["step"])
