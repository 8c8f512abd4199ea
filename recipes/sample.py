"""The policy's own answers to training prompts, n per prompt: the first stage of the own-samples cycle.

    accelerate launch recipes/sample.py --config recipes/configs/sample_own.yaml
    accelerate launch --cpu --num_processes 2 recipes/sample.py --config recipes/configs/sample_own.yaml
    python recipes/sample.py --config recipes/configs/sample_own_7b.yaml        # vLLM on one GPU

Then label the answers (recipes/configs/label_own_samples.yaml) and train the judge
(recipes/configs/train_judge_own_samples.yaml).
"""

from selfj_rlhf.cli.dry_run import DryRunArgs, dry_run_plan, print_plan
from selfj_rlhf.cli.recipes import make_trl_parser, run_cli
from selfj_rlhf.data.prompts import BUNDLED_PROMPTS
from selfj_rlhf.training.sampling import SampleConfig, run_sampling


def make_parser():
    return make_trl_parser(SampleConfig, DryRunArgs)


def main(argv=None):
    config, dry = make_parser().parse_args_and_config(argv)
    if dry.dry_run:
        print_plan(dry_run_plan("sample", [config], model=config.policy, data=[config.dataset or str(BUNDLED_PROMPTS)],
                                dry=dry, stages=[f"sample {config.n} answers per prompt ({config.backend})",
                                                 "samples.jsonl, pool.jsonl"]))
        return
    summary = run_sampling(config)
    if summary is not None:
        print(summary)


if __name__ == "__main__":
    run_cli(main)
