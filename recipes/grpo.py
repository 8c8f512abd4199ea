"""GRPO (TRL GRPOTrainer) with the SELF-J judge as reward, optionally plus a soft overlong punishment.

    accelerate launch recipes/grpo.py --config recipes/configs/grpo.yaml
    accelerate launch --cpu --num_processes 2 recipes/grpo.py --config recipes/configs/grpo.yaml
    accelerate launch --config_file ds_configs/accelerate_zero2.yaml recipes/grpo.py --config recipes/configs/grpo.yaml

The merged policy is written to <output_dir>/policy; restarting after a kill resumes from the newest checkpoint.
"""

from trl import GRPOConfig, ModelConfig

from selfj_rlhf.cli.recipes import cpu_training_defaults, make_trl_parser, run_cli
from selfj_rlhf.cli.dry_run import DryRunArgs, allow_gpu_config_on_cpu, dry_run_plan, print_plan
from selfj_rlhf.data.prompts import BUNDLED_PROMPTS
from selfj_rlhf.rlhf.grpo import GRPOScriptConfig, run_grpo


def make_parser():
    return cpu_training_defaults(make_trl_parser(GRPOScriptConfig, GRPOConfig, ModelConfig, DryRunArgs))


def main(argv=None):
    parser = make_parser()
    allow_gpu_config_on_cpu(parser, argv)
    config, training_args, model_args, dry = parser.parse_args_and_config(argv)
    if dry.dry_run:
        reward = f"judge server {config.judge_server_url}" if config.judge_server_url else f"judge {config.judge}"
        print_plan(dry_run_plan("grpo", [config, training_args], model=model_args.model_name_or_path,
                                data=[config.dataset or str(BUNDLED_PROMPTS)], dry=dry, judge=config.judge,
                                stages=[f"GRPO: {training_args.num_generations} completions per prompt"
                                        f"{' from vLLM (' + training_args.vllm_mode + ')' if training_args.use_vllm else ''}, "
                                        f"rewarded by the {reward}", "publish the merged policy"]))
        return
    print(f"final policy: {run_grpo(config, training_args, model_args)}")


if __name__ == "__main__":
    run_cli(main)
