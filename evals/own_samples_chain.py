"""The own-samples chain of the recipes, rebuilt for the embedded policy from `selfj data prepare` output alone:
its cross-validation table next to the benchmark that chose `selfj-smollm2-135m-v5`.

    selfj data prepare --data_dir data && export SELFJ_DATA_DIR=$PWD/data
    python recipes/sample.py --config recipes/configs/sample_own.yaml
    python recipes/label.py --config recipes/configs/label_own_samples.yaml
    python recipes/train_judge.py --config recipes/configs/train_judge_own_samples.yaml
    python -m evals.own_samples_chain

The chain's judge directory holds its CV table (`cv.json`: 5 folds by training prompt, the within-prompt Spearman
of the out-of-fold scores with the teacher label on the honest answers, pooled and per fold). The question this
answers: does the recipe chain rebuild a judge of v5's class, that is, is its chosen design's figure within the
fold-to-fold spread of v5's 0.319 (evals/results/own_samples_v5.md, the same designs on the benchmark's own
implementation)? The chain draws its 240 training prompts as v5's were drawn, except that training prompts never
come from GSM8K's test split, so its 80 GSM8K prompts are other GSM8K (train split) problems than v5's; its 160
FLASK and GPTeacher prompts are v5's. The samples are new (8 prompts per generate call, each answer from its own
seed), as are the labels; no held-out prompt is read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from evals.lib.common import RESULTS_DIR, command_line, judges_measured, machine_info, write_results

# the v5 benchmark's designs that the chain's grid repeats (evals/results/own_samples_v5.json), by the chain's name
V5_DESIGNS = {"layer 18, weight decay 0.3, pairwise": "own samples, weight decay 0.3",
              "layer 18, weight decay 1.0, pairwise": "own samples, weight decay 1",
              "layer 18, weight decay 3.0, pairwise": "own samples, weight decay 3",
              "layers 9,12,15,18, weight decay 0.3, pairwise": "own samples, weight decay 0.3, layers 9-18 ensemble",
              "layer 18, weight decay 1.0, pairwise, no augmentation rows":
                  "own samples, weight decay 1, no off-topic/injected rows"}


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge_dir", default="runs/judges/selfj-own-samples",
                        help="The judge train_judge_own_samples.yaml wrote.")
    parser.add_argument("--samples", default="runs/own_samples/summary.json", help="The sampling stage's summary.")
    parser.add_argument("--v5", default=str(RESULTS_DIR / "own_samples_v5.json"))
    parser.add_argument("--name", default="own_samples_chain")
    return parser


def compare(cv: dict, v5: dict) -> dict:
    """Per chain design: its CV figures and v5's benchmark figure for the same design; the chosen design's
    distance to v5's chosen 0.319 against the chain's fold-to-fold spread."""
    v5_figures = {name: entry["prompt_cv"]["spearman_within_prompt"] for name, entry in v5["designs"].items()}
    rows = {}
    for name, entry in cv["designs"].items():
        rows[name] = {"spearman_within_prompt": entry["spearman_within_prompt"], "folds": entry["folds"],
                      "fold_std": entry["fold_std"], "at_or_above_honest": entry.get("at_or_above_honest", {}),
                      "v5_benchmark": v5_figures.get(V5_DESIGNS.get(name, ""))}
    chosen = rows[cv["chosen"]]
    v5_chosen = v5_figures[v5["chosen_design"]]
    gap = chosen["spearman_within_prompt"] - v5_chosen
    return {"designs": rows, "chosen": cv["chosen"], "v5_chosen_design": v5["chosen_design"],
            "v5_chosen_spearman": v5_chosen, "difference_to_v5": gap,
            "within_fold_spread": abs(gap) <= chosen["fold_std"]}


def render(p: dict) -> str:
    m, c = p["machine"], p["comparison"]
    kinds = sorted({k for row in c["designs"].values() for k in row["at_or_above_honest"]})
    lines = [f"# The own-samples chain of the recipes, rebuilt for the embedded policy ({p['prompts']} prompts, "
             f"{p['answers']} samples)", "", f"Command: `{p['command']}`  ",
             f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['date']}", "",
             "Chain: `selfj data prepare`, then `recipes/sample.py` (sample_own.yaml), `recipes/label.py` "
             "(label_own_samples.yaml) and `recipes/train_judge.py` (train_judge_own_samples.yaml), which chose the "
             f"design by {p['folds']}-fold cross-validation by training prompt. Within-prompt Spearman of the "
             "out-of-fold scores with the teacher label (honest answers), pooled over prompts and per fold, beside "
             "the v5 benchmark's figure for the same design (evals/results/own_samples_v5.md; its 80 GSM8K prompts "
             "included 8 from GSM8K's test split, the chain's come from the train split only). The last columns: per "
             "augmentation kind, the share of (augmentation row, honest answer of its prompt) pairs where the "
             "augmentation row's out-of-fold score is at least as high.", "",
             f"| design | within-prompt Spearman (CV) | per fold | fold std | v5 benchmark | {' | '.join(kinds)} |",
             "|---|---:|---|---:|---:|" + "---:|" * len(kinds)]
    for name, row in c["designs"].items():
        mark = " **(chosen)**" if name == c["chosen"] else ""
        v5 = "-" if row["v5_benchmark"] is None else f"{row['v5_benchmark']:.3f}"
        rates = " | ".join(f"{row['at_or_above_honest'][k]:.1%}" if k in row["at_or_above_honest"] else "-"
                           for k in kinds)
        lines.append(f"| {name}{mark} | {row['spearman_within_prompt']:.3f} | "
                     f"{', '.join(f'{v:.3f}' for v in row['folds'])} | {row['fold_std']:.3f} | {v5} | {rates} |")
    chosen = c["designs"][c["chosen"]]
    lines += ["", f"The chosen design's {chosen['spearman_within_prompt']:.3f} is {c['difference_to_v5']:+.3f} from "
                  f"v5's {c['v5_chosen_spearman']:.3f} (its fold-to-fold standard deviation: "
                  f"{chosen['fold_std']:.3f}): {'within' if c['within_fold_spread'] else 'outside'} the spread.",
              "", f"Stage times: {p['stage_times']}.", ""]
    return "\n".join(lines)


def main(argv=None):
    args = make_parser().parse_args(argv)
    judge_dir = Path(args.judge_dir)
    cv = json.loads((judge_dir / "cv.json").read_text())
    config = json.loads((judge_dir / "selfj_config.json").read_text())
    samples = json.loads(Path(args.samples).read_text())
    v5 = json.loads(Path(args.v5).read_text())
    training = config["training"]
    payload = {"command": command_line(), "machine": machine_info(), "prompts": training["prompts"],
               "answers": training["answers"], "folds": cv["folds"], "role": config["role"],
               "policy": config["policy"], "labels_sha256": training["labels_sha256"],
               "comparison": compare(cv, v5), "judges_measured": judges_measured({"chain": str(judge_dir)}),
               "stage_times": {"sampling_s": samples["wall_s_this_run"], "sampled_prompts_resumed": samples["resumed_prompts"],
                               "mean_tokens": round(samples["mean_tokens"], 1),
                               "finished_share": round(samples["finished_share"], 3)}}
    write_results(args.name, payload, render(payload))
    print(render(payload))


if __name__ == "__main__":
    main()
