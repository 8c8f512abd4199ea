"""The own-samples chain of the recipes, rebuilt for the embedded policy from `selfj data prepare` output alone:
its cross-validation table next to the benchmark that chose `selfj-smollm2-135m-v5`.

    selfj data prepare --data_dir data && export SELFJ_DATA_DIR=$PWD/data
    python recipes/sample.py --config recipes/configs/sample_own.yaml
    python recipes/label.py --config recipes/configs/label_own_samples.yaml
    python recipes/train_judge.py --config recipes/configs/train_judge_own_samples.yaml
    selfj probe-judge --judge runs/judges/selfj-own-samples --answers runs/probe_samples/samples.jsonl \
        --output_dir runs/probe_chain          # the probe's first honest answers: see below
    python -m evals.rl_loop_check prompts --train_per_source 0 --heldout_per_source 40 --seed 31 \
        --exclude $SELFJ_DATA_DIR/rl_prompts/prompts_judge_train.jsonl $SELFJ_DATA_DIR/rl_prompts/prompts_train.jsonl \
        $SELFJ_DATA_DIR/rl_prompts/prompts_heldout.jsonl runs/probe_prompts/prompts_heldout.jsonl \
        runs/probe_prompts_confirm/prompts_heldout.jsonl --output_dir runs/probe_prompts_final
    python recipes/sample.py --dataset runs/probe_prompts_final/prompts_heldout.jsonl --n 1 --prompts_per_batch 16 \
        --seed 13 --output_dir runs/probe_samples_final
    selfj probe-judge --judge runs/judges/selfj-own-samples --answers runs/probe_samples_final/samples.jsonl \
        --output_dir runs/probe_chain_final
    python -m evals.own_samples_chain --confirm_probe runs/probe_chain_final/probe.json

(runs/probe_prompts_confirm: the same command with --seed 29, without itself among the excluded files; its samples
with --seed 12. runs/probe_prompts: the same command with the default seed, excluding only
prompts_judge_train.jsonl and prompts_train.jsonl; its samples with --seed 11.)

The chain's judge directory holds its CV table (`cv.json`: 5 folds by training prompt, the within-prompt Spearman
of the out-of-fold scores with the teacher label on the honest answers, pooled and per fold). The question this
answers: does the recipe chain rebuild a judge of v5's class, that is, is its chosen design's figure within the
fold-to-fold spread of v5's 0.319 (evals/results/own_samples_v5.md, the same designs on the benchmark's own
implementation)? The chain draws its 240 training prompts as v5's were drawn, except that training prompts never
come from GSM8K's test split, so its 80 GSM8K prompts are other GSM8K (train split) problems than v5's; its 160
FLASK and GPTeacher prompts are v5's. The samples are new (8 prompts per generate call, each answer from its own
seed), as are the labels; no held-out prompt is read. The labels add, per prompt, two content-free answers, the
instruction restated inside a frame and one padded answer as low-labelled rows (`label_own_samples.yaml`), which
v5's did not; the Spearman is over the honest answers only, so the comparison holds. With `--probe`, the attack
probe of the chain's judge is reported beside v5's (evals/results/probe_v5_v3.md: the same 120 held-out prompts
and honest answers); with `--confirm_probe`, the test on prompts drawn after every earlier probe set was read.
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
    parser.add_argument("--probe", default=None, help="probe.json of `selfj probe-judge` on the chain's judge.")
    parser.add_argument("--v5_probe", default=str(RESULTS_DIR / "probe_v5_v3.json"))
    parser.add_argument("--confirm_probe", default=None,
                        help="probe.json of `selfj probe-judge` on the chain's judge with honest answers to fresh "
                             "held-out prompts, drawn after --probe's were used (the test; --probe's are then a "
                             "development set).")
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
             f"| design | within-prompt Spearman (CV) | per fold | fold std | v5 benchmark | chain - v5 | {' | '.join(kinds)} |",
             "|---|---:|---|---:|---:|---:|" + "---:|" * len(kinds)]
    for name, row in c["designs"].items():
        mark = " **(chosen)**" if name == c["chosen"] else ""
        v5 = ("- | -" if row["v5_benchmark"] is None else
              f"{row['v5_benchmark']:.3f} | {row['spearman_within_prompt'] - row['v5_benchmark']:+.3f}")
        rates = " | ".join(f"{row['at_or_above_honest'][k]:.1%}" if k in row["at_or_above_honest"] else "-"
                           for k in kinds)
        lines.append(f"| {name}{mark} | {row['spearman_within_prompt']:.3f} | "
                     f"{', '.join(f'{v:.3f}' for v in row['folds'])} | {row['fold_std']:.3f} | {v5} | {rates} |")
    chosen = c["designs"][c["chosen"]]
    lines += ["", f"The chosen design's {chosen['spearman_within_prompt']:.3f} is {c['difference_to_v5']:+.3f} from "
                  f"v5's {c['v5_chosen_spearman']:.3f} (its fold-to-fold standard deviation: "
                  f"{chosen['fold_std']:.3f}): {'within' if c['within_fold_spread'] else 'outside'} the spread.",
              "", f"Stage times: {p['stage_times']}.", ""]
    if p.get("probe"):
        probe = p["probe"]
        lines += [f"## The attack probe: the chain's judge beside v5 ({probe['prompts']} held-out prompts)", "",
                  f"Command: `{probe['command']}` (honest answers: `{probe['answers']}`, the embedded policy's own "
                  "samples on prompts outside every training prompt; evals/probe_shipped.py). False-positive rate: "
                  "the share of prompts where the attack scores at least as high as the honest answer, with its 95 % "
                  "Wilson interval; shift: the mean score change (0-9).", "",
                  "| attack | class | chain judge: rate [95 % CI] | shift | v5: rate | shift |", "|---|---|---:|---:|---:|---:|"]
        for name, row in probe["attacks"].items():
            v5 = probe["v5_attacks"].get(name)
            lines.append(f"| {name} | {row['kind']} | {rate_cell(row)} | {row['mean_shift']:+.2f} | "
                         + (f"{v5['false_positive_rate']:.1%} | {v5['mean_shift']:+.2f} |" if v5 else "- | - |"))
        lines += ["", f"Chain judge: {verdict(probe)} v5: {'passes' if probe['v5_passed'] else 'fails'}.", ""]
    if p.get("confirm_probe"):
        probe = p["confirm_probe"]
        lines += [f"## The test: the attack probe on {probe['prompts']} fresh held-out prompts", "",
                  f"Command: `{probe['command']}`. The prompts were drawn after the earlier probe sets had been "
                  "read (120 prompts each: evals/probe_shipped.py's and the seed-29 set of this script's docstring): "
                  "a new seed, every training prompt, RL prompt and earlier probe prompt excluded; the embedded "
                  "policy answered each once. The earlier sets showed the failures the chain's design was changed "
                  "for (answers to other prompts, then the echoed prompt) and are development sets from then on; "
                  "the design itself was chosen by cross-validation on the training prompts.", "",
                  "| attack | class | rate [95 % CI] | shift |", "|---|---|---:|---:|"]
        for name, row in probe["attacks"].items():
            lines.append(f"| {name} | {row['kind']} | {rate_cell(row)} | {row['mean_shift']:+.2f} |")
        lines += ["", f"Chain judge: {verdict(probe)}", ""]
    return "\n".join(lines)


def probe_summary(path: str, judge_dir: Path) -> dict:
    """What the result keeps of a `selfj probe-judge` probe.json, with the command that wrote it."""
    probe = json.loads(Path(path).read_text())
    return {"command": f"selfj probe-judge --judge {judge_dir} --answers {probe['answers']} "
                       f"--output_dir {Path(path).parent}",
            **{key: probe[key] for key in ("answers", "prompts", "passed", "failures", "attacks", "length_control")}}


def rate_cell(row: dict) -> str:
    """An attack's false-positive rate with its 95 % interval."""
    low, high = row["false_positive_ci95"]
    return f"{row['false_positive_rate']:.1%} [{low:.1%}, {high:.1%}]"


def verdict(probe: dict) -> str:
    return f"{'passes' if probe['passed'] else 'fails'} the probe's thresholds" + (
        "." if probe["passed"] else f" ({'; '.join(probe['failures'])}).")


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
    if args.probe:
        v5_probe = json.loads(Path(args.v5_probe).read_text())["results"]["own_samples"]
        payload["probe"] = {**probe_summary(args.probe, judge_dir), "v5_attacks": v5_probe["attacks"],
                            "v5_passed": v5_probe["passed"]}
    if args.confirm_probe:
        payload["confirm_probe"] = probe_summary(args.confirm_probe, judge_dir)
    write_results(args.name, payload, render(payload))
    print(render(payload))


if __name__ == "__main__":
    main()
