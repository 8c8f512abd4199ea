#!/usr/bin/env bash
# The pre-registered policy-improvement test (evals/preregistration/policy_improvement.yaml), every stage in the
# plan's order, from `selfj data prepare` output alone. Each stage is a recipe or a step of evals/policy_improvement.py
# that skips what it has finished, so the same command resumes after a kill.
#
#   SELFJ_DATA_DIR=data bash evals/policy_improvement.sh
#   SELFJ_DATA_DIR=data LAUNCH="accelerate launch --cpu --num_processes 2" bash evals/policy_improvement.sh
#   SELFJ_DATA_DIR=data DRY_RUN=1 bash evals/policy_improvement.sh     # print the commands, run nothing
#
# LAUNCH starts the recipes that sample or train (default `accelerate launch`); PYTHON runs the rest (default
# `python`). The budget check decides the rejection-sampling arms' epochs as the plan says: arm d is trained with
# 3 epochs first, and if its policy moves the development references' log-probability by under 0.05 nats per token,
# every arm is trained with 6 (output folders rs_<arm>_6ep). A dry run cannot know the check's outcome and prints the
# 6-epoch branch, the one the check took (evals/policy_improvement.py).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SELFJ_DATA_DIR:?set SELFJ_DATA_DIR to the folder that 'selfj data prepare' wrote}"
read -r -a launch <<< "${LAUNCH:-accelerate launch}"
read -r -a py <<< "${PYTHON:-python}"
out=runs/policy_improvement

run() {
  echo "+ $*" >&2
  [[ -n ${DRY_RUN:-} ]] || "$@"
}

# the test set: the committed draw's ids (the plan allows no second draw)
[[ -f $out/draw.json ]] || run "${py[@]}" -m evals.policy_improvement restore

# the rejection-sampling arms' answers: the own-samples cycle's 8 per training prompt, the teacher's labels of them,
# and both scored as candidates (judge.jsonl by the plan's judge, teacher.jsonl by the labels)
run "${launch[@]}" recipes/sample.py --config recipes/configs/sample_own.yaml
run "${py[@]}" recipes/label.py --config recipes/configs/label_own_samples.yaml
run "${py[@]}" -m evals.policy_improvement arm-candidates

rs=(recipes/rejection_sampling.py --config recipes/configs/rejection_sampling.yaml --drop_unfinished true)
judged=(--candidates_file "$out/rs_candidates/judge.jsonl")
taught=(--candidates_file "$out/rs_candidates/teacher.jsonl" --pick highest_score)

# the budget check: arm d with the plan's 3 epochs, before any test-set evaluation
run "${launch[@]}" "${rs[@]}" "${taught[@]}" --num_train_epochs 3 --output_dir "$out/rs_d"
[[ -f $out/budget_check.json ]] \
  || run "${py[@]}" -m evals.policy_improvement budget-check --policy "$out/rs_d/round-00/policy"
epochs=6
if [[ -z ${DRY_RUN:-} ]]; then
  epochs=$("${py[@]}" -c "import json, sys; print(6 if json.load(open(sys.argv[1]))['retrain_with_6_epochs'] else 3)" \
    "$out/budget_check.json")
fi
suffix=""
[[ $epochs == 6 ]] && suffix=_6ep

# arm a's two rounds (round 1: 8 new samples per prompt from round 0's policy), then arms b-d at the same budget
run "${launch[@]}" recipes/rejection_sampling.py --config recipes/configs/rejection_sampling_policy_improvement.yaml \
  --num_train_epochs "$epochs" --output_dir "$out/rs_a$suffix"
run "${launch[@]}" "${rs[@]}" "${judged[@]}" --pick random --pick_seed 43 --num_train_epochs "$epochs" \
  --output_dir "$out/rs_b$suffix"
run "${launch[@]}" "${rs[@]}" "${judged[@]}" --pick shortest --num_train_epochs "$epochs" --output_dir "$out/rs_c$suffix"
if [[ $epochs == 6 ]]; then
  run "${launch[@]}" "${rs[@]}" "${taught[@]}" --num_train_epochs 6 --output_dir "$out/rs_d_6ep"
  [[ -f $out/budget_check_6ep.json ]] || run "${py[@]}" -m evals.policy_improvement budget-check \
    --policy "$out/rs_d_6ep/round-00/policy" --output "$out/budget_check_6ep.json"
fi

# DPO on the judge's margins, GRPO with the judge as reward, best-of-16 on the test prompts
run "${py[@]}" recipes/build_pairs.py --config recipes/configs/build_pairs_policy_improvement.yaml
run "${launch[@]}" recipes/dpo.py --config recipes/configs/dpo.yaml --pairs_file "$out/dpo_pairs/pairs.jsonl" \
  --num_train_epochs 3 --output_dir "$out/dpo"
run "${launch[@]}" recipes/grpo.py --config recipes/configs/grpo_policy_improvement.yaml
run "${launch[@]}" recipes/best_of_n.py --config recipes/configs/best_of_n_policy_improvement.yaml
run "${py[@]}" -m evals.policy_improvement best-of-n

# every policy's greedy answers to the test prompts, measured against the references, and the plan's analysis
run "${py[@]}" -m evals.policy_improvement evaluate --policy base=smollm2-135m-instruct \
  --policy "rs_a=$out/rs_a$suffix/round-00/policy" --policy "rs_b=$out/rs_b$suffix/round-00/policy" \
  --policy "rs_c=$out/rs_c$suffix/round-00/policy" --policy "rs_d=$out/rs_d$suffix/round-00/policy" \
  --policy "rs_a2=$out/rs_a$suffix/round-01/policy" --policy "dpo=$out/dpo/round-00/policy" \
  --policy "grpo=$out/grpo/policy"
run "${py[@]}" -m evals.policy_improvement_report
