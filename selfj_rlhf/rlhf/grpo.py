"""Online RL with the SELF-J reward: TRL's GRPOTrainer on a prompt set, the judge as reward function
(optionally with TRL's soft overlong punishment as a second reward against length hacking)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ConfigError
from ..core.models import validate_model_spec
from ..data.prompts import load_prompts
from ..judge.directory import default_judge_for
from ..judge.options import JudgeArgs
from ..judge.reward_signal import SelfJRewardConfig
from .probe_reward import ProbeRewardCallback
from .reward import SelfJReward
from .rounds import finished_policy, load_policy_for_training, train_and_publish, training_args_in


@dataclass
class GRPOScriptConfig(JudgeArgs):
    """Prompts and reward of the GRPO recipe (the judge options are ``JudgeArgs``'s; the policy is ModelConfig's
    ``--model_name_or_path``)."""

    dataset: str | None = field(default=None, metadata={
        "help": "Prompts: local JSON/JSONL/parquet or hub dataset with an `instruction` column (default: bundled)."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a hub dataset."})
    instruction_field: str = field(default="instruction", metadata={"help": "Column holding the instruction."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    conversational: bool = field(default=True, metadata={
        "help": "Give prompts as chat messages (the chat template is applied); False: plain strings."})
    reward_use_reference: bool = field(default=False, metadata={
        "help": "Score with the with-reference template against the dataset's `reference` column."})
    reward_transform: str = field(default="raw", metadata={"help": "raw, centered or zscore (see SelfJRewardConfig)."})
    reward_length_penalty: float = field(default=0.0, metadata={
        "help": "Subtracted from the judge reward per 100 completion tokens."})
    overlong_cache: int = field(default=0, metadata={
        "help": "> 0 adds TRL's soft overlong punishment reward over the last N tokens before max_completion_length."})
    probe_prompts: str | None = field(default=None, metadata={
        "help": "Prompt file of a fixed probe set: every probe_every steps the policy's greedy answers to its first "
                "probe_max_prompts prompts are scored by the judge (probe_reward.jsonl in output_dir: the reward on "
                "prompts that do not change with the step, and the answer length). Unset: no probe."})
    probe_every: int = field(default=10, metadata={"help": "Optimizer steps between probes (and one at the start)."})
    probe_max_prompts: int = field(default=16, metadata={"help": "Probe prompts used (the file's first ones)."})

    def __post_init__(self):
        super().__post_init__()
        if self.overlong_cache < 0:
            raise ConfigError(f"overlong_cache must be >= 0, got {self.overlong_cache}")
        if self.probe_every < 1 or self.probe_max_prompts < 1:
            raise ConfigError(f"probe_every and probe_max_prompts must be >= 1, got {self.probe_every} and "
                              f"{self.probe_max_prompts}")


def prompt_rows(cfg: GRPOScriptConfig) -> list[dict]:
    """GRPO dataset rows: ``prompt`` (string or one user message) and ``reference`` when the data has one."""

    rows = []
    for record in load_prompts(cfg.dataset, split=cfg.dataset_split, instruction_field=cfg.instruction_field,
                               max_prompts=cfg.max_prompts):
        prompt = [{"role": "user", "content": record.instruction}] if cfg.conversational else record.instruction
        row = {"prompt": prompt}
        if cfg.reward_use_reference:
            if record.reference is None:
                raise ConfigError(f"reward_use_reference is set but prompt '{record.id}' has no 'reference' field")
            row["reference"] = record.reference
        rows.append(row)
    return rows


def reward_functions(cfg: GRPOScriptConfig, policy: str, max_completion_length: int) -> list:
    from trl.rewards import get_soft_overlong_punishment

    options = {**cfg.judge_options(), "judge": cfg.judge or default_judge_for(policy)}
    rewards = [SelfJReward(SelfJRewardConfig(**options, policy=policy, use_reference=cfg.reward_use_reference,
                                             transform=cfg.reward_transform, length_penalty=cfg.reward_length_penalty))]
    if cfg.overlong_cache:
        if cfg.overlong_cache >= max_completion_length:
            raise ConfigError(f"overlong_cache ({cfg.overlong_cache}) must be below max_completion_length "
                              f"({max_completion_length})")
        rewards.append(get_soft_overlong_punishment(max_completion_length, cfg.overlong_cache))
    return rewards


def run_grpo(cfg: GRPOScriptConfig, training_args, model_args) -> Path:
    """Train with GRPO and publish the merged policy in ``<output_dir>/policy``; resumes from checkpoints."""
    from datasets import Dataset
    from trl import GRPOTrainer, get_peft_config

    policy = model_args.model_name_or_path
    if not policy:
        raise ConfigError("set the policy with --model_name_or_path (hub id, directory or embedded alias)")
    validate_model_spec(policy)
    directory = Path(training_args.output_dir)
    if finished_policy(directory):  # a finished run started again: nothing to train, nothing to publish again
        print(f"[{directory.name}] policy: done, skipped")
        return directory / "policy"
    if cfg.reward_use_reference:
        training_args.remove_unused_columns = False  # the reward reads the `reference` column
    rewards = reward_functions(cfg, policy, training_args.max_completion_length)
    model, tokenizer = load_policy_for_training(policy, model_args)
    trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=training_args_in(training_args, directory),
                          train_dataset=Dataset.from_list(prompt_rows(cfg)), processing_class=tokenizer,
                          peft_config=get_peft_config(model_args))
    if cfg.probe_prompts:
        probe = [r.instruction for r in load_prompts(cfg.probe_prompts, max_prompts=cfg.probe_max_prompts)]
        trainer.add_callback(ProbeRewardCallback(probe, rewards[0].judge_scores, tokenizer, directory,
                                                 every=cfg.probe_every,
                                                 max_new_tokens=training_args.max_completion_length))
    return train_and_publish(trainer, policy, model_args, directory, {"recipe": "grpo", "judge": rewards[0].config.judge})
