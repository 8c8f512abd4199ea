"""Rejection-sampling fine-tuning with the SELF-J judge: rounds of best-of-n -> best candidate per
prompt above a score threshold -> SFT (TRL SFTTrainer, LoRA or full) -> next round's policy. Controls: --pick random
or shortest trains on another candidate instead of the judge's best; --candidates_file reuses scored candidates
for round 0 (the same answers for every arm).

    accelerate launch recipes/rejection_sampling.py --config recipes/configs/rejection_sampling.yaml
    accelerate launch --cpu --num_processes 2 recipes/rejection_sampling.py --config recipes/configs/rejection_sampling.yaml
    accelerate launch --config_file ds_configs/accelerate_zero2.yaml recipes/rejection_sampling.py \
        --config recipes/configs/rejection_sampling.yaml

Restarting the same command after a kill resumes: finished stages of every round are skipped.
"""

from trl import ModelConfig, SFTConfig

from selfj_rlhf.cli.recipes import cpu_training_defaults, make_trl_parser, run_cli
from selfj_rlhf.cli.dry_run import DryRunArgs, allow_gpu_config_on_cpu, dry_run_plan, print_plan
from selfj_rlhf.rlhf.rounds import RejectionSamplingConfig, run_rejection_sampling
from selfj_rlhf.data.prompts import BUNDLED_PROMPTS


def make_parser():
    return cpu_training_defaults(make_trl_parser(RejectionSamplingConfig, SFTConfig, ModelConfig, DryRunArgs))


def main(argv=None):
    parser = make_parser()
    allow_gpu_config_on_cpu(parser, argv)
    config, training_args, model_args, dry = parser.parse_args_and_config(argv)
    if dry.dry_run:
        picked = {"highest_score": "keep the best", "random": "keep a random one", "shortest": "keep the shortest"}
        stages = [f"round {k}: "
                  + (f"read {config.candidates_file}" if k == 0 and config.candidates_file
                     else f"sample {config.n} answers per prompt, judge")
                  + f"{', drop those cut at the token cap' if config.drop_unfinished else ''}, {picked[config.pick]}"
                  f"{'' if config.score_threshold is None else f' scoring >= {config.score_threshold}'}, SFT, "
                  "publish the merged policy" for k in range(config.rounds)]
        data = [config.dataset or str(BUNDLED_PROMPTS)] + ([config.candidates_file] if config.candidates_file else [])
        print_plan(dry_run_plan("rejection_sampling", [config, training_args], model=model_args.model_name_or_path,
                                data=data, dry=dry, judge=config.judge, template=config.judge_template,
                                max_length=config.max_judge_length, stages=stages))
        return
    print(f"final policy: {run_rejection_sampling(config, training_args, model_args)}")


if __name__ == "__main__":
    run_cli(main)
