"""Kill-and-resume campaign: SIGKILL each long-running recipe at random moments, restart it with the same
command each time, and check that the final outputs equal an uninterrupted run's, with no row lost or
duplicated and every output file parsing.

    python -m evals.kill_resume --kills 5                  # the larger run (evals/results/kill_resume.md)
    (tests/test_kill_resume.py runs it with 2 kills per recipe on the tiny model in CI)

Recipes: the own-samples sampling stage, best-of-n, labelling (of the policy's answers, and of a response pool with
its augmentation rows), pair building, one rejection-sampling round (sampling, selection, SFT, publishing), two DPO
rounds (the second sampling from the first's policy), GRPO, `selfj alpaca-eval generate`, `selfj data prepare`, and
both judge trainings (LoRA digit self-distillation with checkpoints, and the scalar head with cross-validation), all
on a tiny random Llama with the SmolLM2 tokenizer (the harness builds it), so a kill can land in any stage within
seconds. Kill times are drawn (seeded) uniformly between 0.2 s and the uninterrupted run's duration, and every other
kill is aimed: within a second after one of the stage's marks appears (in turn: its first output, such as a shard
row, a checkpoint or cached states, and the boundaries between its stages, such as a round's pairs or its published
policy). Checks per recipe: the final outputs equal the reference run's (rows, order, scores; trained weights, of
the policy or the judge, agree to 1e-4), shard rows are unique, no temporary file is left, and the finished run
started again changes nothing (a judge says it is already trained, a loop that its policy is published).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def recipe_commands(work: Path, model: Path) -> dict[str, callable]:
    """name -> (output dir -> argv). Inputs are written into ``work``."""
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "instruction": f"Give fact number {i} about rivers.",
                                           "reference": f"Rivers flow downhill; fact {i} is about water."}) + "\n"
                               for i in range(10)))
    scored = work / "scored.jsonl"
    rng = random.Random(0)
    scored.write_text("".join(json.dumps({"id": f"s{i}", "instruction": f"Q{i}?", "candidates": [
        {"text": f"answer {i}.{j}", "score": round(rng.uniform(0, 9), 3), "num_tokens": rng.randint(1, 200)}
        for j in range(4)]}) + "\n" for i in range(5000)))
    labels = work / "judge_labels.jsonl"  # teacher labels as the label stage writes them: digit and 0-9 scores
    labels.write_text("".join(json.dumps({
        "instruction": f"Question {q}?", "reference": f"Reference answer {q}.", "response": "word " * (2 + k),
        "group": f"q{q}", "kind": "pool", "label": (3 * k) % 10, "score_label": float(3 * k)}) + "\n"
        for q in range(6) for k in range(4)))
    scalar_config = work / "train_judge_scalar.yaml"  # a cv_grid is a list of mappings: YAML, as users give it
    scalar_config.write_text(json.dumps({
        "labels": str(labels), "base_model": str(model), "head": "scalar", "head_layers": [1, 2], "beta": 0.0,
        "max_length": 128, "cv_folds": 3, "cv_grid": [{"layers": 1}, {"layers": [1, 2]}], "report_to": "none"}))
    pool = work / "pool.jsonl"  # other answers to label, as the sampling stage writes them
    pool.write_text("".join(json.dumps({
        "id": f"p{q}#{k}", "question_id": f"p{q}", "model": "m", "instruction": f"Name river number {q}.",
        "reference": f"River {q} is the Nile, which flows north.", "response": f"River {q} is " + "long " * k})
        + "\n" for q in range(12) for k in range(4)))
    alpaca = work / "alpaca_references.json"  # AlpacaEval's layout: instruction, output, generator, dataset
    alpaca.write_text(json.dumps([{"instruction": f"Describe lake {i}.", "output": f"Lake {i} is deep.",
                                   "generator": "reference", "dataset": "x"} for i in range(10)]))
    raw = work / "raw"  # raw FLASK, GPTeacher and GSM8K files for `selfj data prepare`
    raw.mkdir(exist_ok=True)
    (raw / "flask_evaluation.jsonl").write_text("".join(json.dumps({
        "idx": i, "instruction": f"Explain idea number {i}.", "answer": f"Idea {i} is explained here.", "task": "t",
        "skill": [], "domain": [], "difficulty": 1}) + "\n" for i in range(40)))
    (raw / "codegen-instruct.json").write_text(json.dumps([{"instruction": f"Write function {i}.", "input": "",
                                                   "response": f"def f{i}(): return {i}"} for i in range(40)]))
    (raw / "gsm8k").mkdir(exist_ok=True)
    for split in ("train", "test"):
        (raw / "gsm8k" / f"{split}.jsonl").write_text("".join(json.dumps({
            "question": f"What is {i} + {i} ({split})?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"}) + "\n"
            for i in range(40)))
    python = sys.executable
    train_flags = ["--save_strategy", "steps", "--save_steps", "4", "--per_device_train_batch_size", "2", "--lora_r",
                   "4", "--report_to", "none", "--logging_steps", "4", "--max_length", "128"]
    return {
        "sample": lambda out: [python, "recipes/sample.py", "--policy", str(model), "--dataset", str(prompts),
                               "--n", "3", "--max_new_tokens", "8", "--output_dir", str(out)],
        "best_of_n": lambda out: [python, "recipes/best_of_n.py", "--policy", str(model), "--dataset", str(prompts),
                                  "--n", "3", "--max_new_tokens", "8", "--output_dir", str(out)],
        "label": lambda out: [python, "recipes/label.py", "--policy", str(model), "--data", str(prompts), "--k", "3",
                              "--max_new_tokens", "8", "--min_reference_chars", "5", "--output_dir", str(out)],
        "build_pairs": lambda out: [python, "recipes/build_pairs.py", "--candidates", str(scored), "--output_file",
                                    str(out / "pairs.jsonl"), "--strategy", "max_random"],
        "rejection_sampling": lambda out: [python, "recipes/rejection_sampling.py", "--model_name_or_path", str(model),
                                           "--dataset", str(prompts), "--n", "2", "--max_new_tokens", "8",
                                           "--output_dir", str(out), "--max_steps", "24", "--save_steps", "4",
                                           "--save_strategy", "steps", "--per_device_train_batch_size", "2",
                                           "--lora_r", "4", "--report_to", "none", "--logging_steps", "4",
                                           "--max_length", "128"],
        "train_judge_digit": lambda out: [python, "recipes/train_judge.py", "--labels", str(labels), "--base_model",
                                          str(model), "--output_dir", str(out), "--max_steps", "24", "--save_steps",
                                          "4", "--save_strategy", "steps", "--per_device_train_batch_size", "2",
                                          "--learning_rate", "1e-3", "--lora_r", "4", "--lora_alpha", "8",
                                          "--report_to", "none", "--logging_steps", "4", "--max_length", "128"],
        "train_judge_scalar": lambda out: [python, "recipes/train_judge.py", "--config", str(scalar_config),
                                           "--output_dir", str(out), "--feature_cache",
                                           str(out.parent / f"{out.name}-features")],
        "label_pool": lambda out: [python, "recipes/label.py", "--policy", str(model), "--pool", str(pool),
                                   "--normalize", "within", "--similarity_weight", "0", "--overlap_weight", "1",
                                   "--selfeval_weight", "1", "--pool_content_free_per_instruction", "1",
                                   "--pool_padded_per_instruction", "1", "--max_judge_length", "256",
                                   "--output_dir", str(out), "--labels_name", "labels.jsonl"],
        "dpo": lambda out: [python, "recipes/dpo.py", "--model_name_or_path", str(model), "--dataset", str(prompts),
                            "--n", "3", "--max_new_tokens", "8", "--rounds", "2", "--max_steps", "8",
                            "--output_dir", str(out), *train_flags],
        "grpo": lambda out: [python, "recipes/grpo.py", "--model_name_or_path", str(model), "--dataset", str(prompts),
                             "--num_generations", "2", "--max_completion_length", "8", "--overlong_cache", "4",
                             "--max_steps", "12", "--output_dir", str(out), *train_flags[:-2]],
        "alpaca_eval_generate": lambda out: [python, "-m", "selfj_rlhf.cli.main", "alpaca-eval", "generate",
                                             "--policy", str(model), "--dataset", str(alpaca), "--max_new_tokens",
                                             "8", "--output_dir", str(out)],
        "data_prepare": lambda out: [python, "-m", "selfj_rlhf.cli.main", "data", "prepare", "--data_dir", str(out),
                                     "--raw", f"flask={raw / 'flask_evaluation.jsonl'}",
                                     f"gpteacher_codegen={raw / 'codegen-instruct.json'}",
                                     f"gsm8k={raw / 'gsm8k'}", "--rl_train_per_source", "8",
                                     "--rl_heldout_per_source", "4", "--judge_extra_per_source", "4"],
    }


FINAL_OUTPUTS = {"sample": ["samples.jsonl", "pool.jsonl", "summary.json"], "best_of_n": ["candidates.jsonl", "model_outputs.json", "summary.json"],
                 "label": ["labels.jsonl"], "build_pairs": ["pairs.jsonl", "pairs_report.json"],
                 "rejection_sampling": ["round-00/best_of_n/candidates.jsonl", "round-00/sft_data.jsonl",
                                        "round-00/policy/round.json"],
                 "train_judge_digit": [], "train_judge_scalar": ["cv.json"], "label_pool": ["labels.jsonl"],
                 "dpo": ["round-00/pairs.jsonl", "round-01/best_of_n/candidates.jsonl", "round-01/pairs.jsonl",
                         "round-01/policy/round.json"],
                 "grpo": ["policy/round.json"], "alpaca_eval_generate": ["model_outputs.json", "candidates.jsonl"],
                 "data_prepare": ["flask/flask_ref.jsonl", "gpteacher_codegen/codegen_ref.jsonl",
                                  "gsm8k/gsm8k_ref.jsonl", "rl_prompts/prompts_train.jsonl",
                                  "rl_prompts/prompts_heldout.jsonl", "rl_prompts/prompts_judge_train.jsonl"]}
# outputs that mark a point inside each stage or a boundary between its stages, relative to the output directory's
# parent: aimed kills land within a second after one of them appears (in turn)
FIRST_OUTPUT = {"sample": ["{out}/shards/*.jsonl"], "best_of_n": ["{out}/shards/*.jsonl"],
                "label": ["{out}/shards/*.jsonl"],
                "rejection_sampling": ["{out}/round-00/best_of_n/shards/*.jsonl", "{out}/round-00/sft_data.jsonl",
                                       "{out}/round-00/trainer/checkpoint-*/trainer_state.json"],
                "train_judge_digit": ["{out}/checkpoint-*/trainer_state.json"],
                "train_judge_scalar": ["{out}-features/*/*", ".{out}.*.tmp/*"],
                "label_pool": ["{out}/selfeval_cache/*.npz"],
                "dpo": ["{out}/round-00/best_of_n/shards/*.jsonl", "{out}/round-00/pairs.jsonl",
                        "{out}/round-00/trainer/checkpoint-*/trainer_state.json", "{out}/round-00/policy/round.json",
                        "{out}/round-01/best_of_n/shards/*.jsonl"],
                "grpo": ["{out}/trainer/checkpoint-*/trainer_state.json"],
                "alpaca_eval_generate": ["{out}/shards/*.jsonl"],
                "data_prepare": ["{out}/*/*_ref.jsonl", "{out}/rl_prompts/prompts_train.jsonl"]}
# trained weights compared within WEIGHT_TOLERANCE, and the judge's config without its training record
WEIGHTS = {"rejection_sampling": "round-00/policy/model.safetensors", "dpo": "round-01/policy/model.safetensors",
           "grpo": "policy/model.safetensors",
           "train_judge_digit": "adapter_model.safetensors", "train_judge_scalar": "scalar_head.safetensors"}
WEIGHT_TOLERANCE = 1e-4
# timings, and the trainer's log (its runtime fields; a resumed run logs a step's loss from restored state)
VOLATILE = {"wall_s_this_run", "resumed_prompts", "wall_s", "resumed", "training_s", "first_loss", "last_loss",
            "log_history"}


def run(argv: list[str], timeout: float | None = None, after_output: tuple[Path, str] | None = None,
        ) -> tuple[int | None, float]:
    """Run to completion (timeout None) or SIGKILL the whole process group after ``timeout`` seconds; with
    ``after_output`` (directory, glob), the ``timeout`` counts from when this run first writes a file matching it
    (a new one, or one it rewrote), so the kill lands inside the stage rather than during imports."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    # files of the mark left by an earlier attempt do not count: the kill lands after this run's own output
    seen = file_times(*after_output) if after_output is not None else {}
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    if after_output is not None and timeout is not None:
        while proc.poll() is None and not any(p.stat().st_size and mtime != seen.get(p)
                                              for p, mtime in file_times(*after_output).items()):
            time.sleep(0.01)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return proc.returncode, time.perf_counter() - start


def comparable(path: Path, root: Path):
    """A file's content with run-dependent fields (timings, resume counts) removed, and the run's own directory
    (``root``, as in a later round's ``trained_from``) written as ``<out>``."""
    text = path.read_text().replace(str(root), "<out>")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines()]
    data = json.loads(text)
    return {k: v for k, v in data.items() if k not in VOLATILE} if isinstance(data, dict) else data


def check(name: str, out: Path, reference: Path) -> dict:
    problems = []
    for rel in FINAL_OUTPUTS[name]:
        if not (out / rel).is_file():
            problems.append(f"{rel} missing")
        elif (got := comparable(out / rel, out)) != (want := comparable(reference / rel, reference)):
            detail = ({k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)}
                      if isinstance(got, dict) and isinstance(want, dict) else "rows differ")
            problems.append(f"{rel} differs from the uninterrupted run: {detail}")
    for shards in out.rglob("shards"):
        ids = [json.loads(line)["id"] for shard in shards.glob("*.jsonl") for line in shard.read_text().splitlines()]
        if len(ids) != len(set(ids)):
            problems.append(f"{shards}: {len(ids) - len(set(ids))} duplicated rows")
    leftovers = [str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith(".tmp") or p.name == ".policy.tmp"]
    current = out.readlink().name if out.is_symlink() else None  # a published judge's version
    leftovers += [p.name for p in out.parent.glob(f".{out.name}.*") if p.name != current]
    if leftovers:
        problems.append(f"temporary files left: {leftovers[:3]}")
    if name in WEIGHTS and not problems:
        from safetensors.torch import load_file

        if not (out / WEIGHTS[name]).is_file():
            problems.append(f"{WEIGHTS[name]} missing")
        else:
            a, b = load_file(out / WEIGHTS[name]), load_file(reference / WEIGHTS[name])
            diff = max(float((a[k] - b[k]).abs().max()) for k in a) if a.keys() == b.keys() else float("inf")
            if diff > WEIGHT_TOLERANCE:
                problems.append(f"{WEIGHTS[name]} differs by {diff:.2e}")
    if name.startswith("train_judge") and not problems:
        got, want = (json.loads((d / "selfj_config.json").read_text()) for d in (out, reference))
        got.pop("training"), want.pop("training")
        if got != want:
            problems.append("selfj_config.json differs from the uninterrupted run's")
    return {"ok": not problems, "problems": problems}


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file of a finished run (through a published judge's link) by relative path, with its bytes."""
    root = out.resolve()
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def rerun_changes_nothing(name: str, command: list[str], out: Path) -> list[str]:
    """Start a finished run again: no file may change (a sharded stage finds every row done; a judge is kept)."""
    before = snapshot(out)
    run(command)
    after = snapshot(out)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k)
                     and not k.endswith("summary.json"))  # summaries record this run's wall time
    return [f"run again, the finished run changed {changed[:3]}"] if changed else []


def remove_run(out: Path) -> None:
    """An output directory, a published judge's link with its versions, and its feature cache."""
    for path in [out, *out.parent.glob(f".{out.name}.*"), out.parent / f"{out.name}-features"]:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)


def file_times(directory: Path, pattern: str) -> dict[Path, int]:
    """The files matching ``pattern`` in ``directory``, with their modification times."""
    return {p: p.stat().st_mtime_ns for p in directory.glob(pattern) if p.is_file()}


def mark_files(out: Path, marks: list[str]) -> dict[Path, int]:
    """The files of a stage's marks (``FIRST_OUTPUT``) with their modification times."""
    return {p: mtime for mark in marks for p, mtime in file_times(out.parent, mark.format(out=out.name)).items()}


def marks_written(out: Path, marks: list[str], before: dict[Path, int]) -> list[str]:
    """The marks a killed run had written (new or rewritten files since ``before``): where in the stage the kill
    landed (none: before its first output, during imports, loading or a stage that writes no mark)."""
    return [mark_label(mark) for mark in marks
            if any(mtime != before.get(p) for p, mtime in file_times(out.parent, mark.format(out=out.name)).items())]


def mark_label(mark: str) -> str:
    """A mark as the results name it: relative to the output directory, or in the feature cache beside it."""
    if "-features/" in mark:
        return "cached states"
    return "judge being published" if mark.startswith(".") else mark.split("/", 1)[-1]


def trained_steps(out: Path, reference: Path) -> dict | None:
    """The optimizer steps of a training stage's published result, killed run and reference (``round.json``, or
    a digit judge's ``train_log.json``); None for a stage that does not train."""
    def steps(root: Path):
        found = {str(p.relative_to(root)): json.loads(p.read_text())["steps"] for p in sorted(root.rglob("round.json"))}
        if (root / "train_log.json").is_file():  # a digit judge's trainer log: its last step
            found["train_log.json"] = json.loads((root / "train_log.json").read_text())[-1]["step"]
        return found

    if not out.exists():
        return None
    got, want = steps(out), steps(reference)
    return {"killed_run": got, "uninterrupted": want} if got or want else None


def campaign(work: Path, kills: int, seed: int, recipes: list[str] | None = None) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    from selfj_rlhf.testing import build_tiny_llama

    model = build_tiny_llama(work / "tiny_model")
    commands = recipe_commands(work, model)
    rng = random.Random(seed)
    results = {}
    for name in recipes or list(commands):
        reference, out = work / f"{name}-reference", work / f"{name}-killed"
        remove_run(out)
        remove_run(reference)
        _, duration = run(commands[name](reference))
        survived, attempts, problems, checked, landed = 0, 0, [], 0, []
        last_killed = False
        while survived < kills and attempts < kills * 6:
            attempts += 1
            # every other kill waits for one of the stage's marks (in turn) and lands within a second of it
            aimed = attempts % 2 == 0 and name in FIRST_OUTPUT
            marks = FIRST_OUTPUT.get(name, [])
            mark = marks[(attempts // 2 - 1) % len(marks)].format(out=out.name) if aimed else None
            delay = rng.uniform(0, 1.0) if aimed else rng.uniform(0.2, duration)
            before = mark_files(out, marks)
            code, seconds = run(commands[name](out), timeout=delay, after_output=(out.parent, mark) if aimed else None)
            last_killed = code is None
            if last_killed:
                survived += 1
                landed.append({"seconds": round(seconds, 2), "aimed_after": mark and mark_label(mark),
                               "outputs_written": marks_written(out, marks, before)})
            else:  # the resumed run finished before the next kill: check it, then start a fresh cycle
                checked += 1
                problems += check(name, out, reference)["problems"]
                remove_run(out)
        # after the last kill, always finish and check the run: a kill during imports (a slow machine) leaves no
        # output directory yet, and the finishing run must still be checked
        if last_killed:
            run(commands[name](out))
            checked += 1
            problems += check(name, out, reference)["problems"]
        if out.exists():
            problems += rerun_changes_nothing(name, commands[name](out), out)
        results[name] = {"kills_survived": survived, "completed_runs_checked": checked,
                         "reference_seconds": round(duration, 1), "ok": not problems and checked > 0,
                         "problems": problems, "kills": landed, "steps": trained_steps(out, reference)}
        print(name, results[name], flush=True)
    return results


def landing_summary(kills: list[dict]) -> str:
    counts: dict[str, int] = {}
    for kill in kills:
        where = kill["outputs_written"][-1] if kill["outputs_written"] else "before output"
        counts[where] = counts.get(where, 0) + 1
    return ", ".join(f"{n} x {where}" for where, n in counts.items()) or "-"


def steps_summary(steps: dict | None) -> str:
    if not steps:
        return "-"
    return ", ".join(f"{key}: {steps['killed_run'].get(key)} / {value}" for key, value in steps["uninterrupted"].items())


def render(p: dict) -> str:
    m, results = p["machine"], p["results"]
    lines = [f"# Kill-and-resume campaign ({p['kills']} SIGKILLs per recipe, seed {p['seed']})", "",
             f"Command: `{p['command']}`  ", f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['date']}", "",
             "Where the kills landed: the last of the stage's marks (its first output, the boundaries between its "
             "stages) that the killed run had written; 'before output': during imports or loading, or in a stage "
             "that writes no mark before it finishes (a resumed run may also have nothing left to write). Steps: the "
             "optimizer steps of what the killed-and-resumed run published, against the uninterrupted run's.", "",
             "| recipe | kills survived | where they landed | resumed runs checked | uninterrupted run (s) | steps "
             "(resumed / uninterrupted) | outputs equal, no duplicates, no temp files, rerun changes nothing | "
             "problems |", "|---|---:|---|---:|---:|---|---|---|",
             *[f"| {k} | {v['kills_survived']} | {landing_summary(v['kills'])} | {v['completed_runs_checked']} | "
               f"{v['reference_seconds']} | {steps_summary(v['steps'])} | {'yes' if v['ok'] else 'NO'} | "
               f"{'; '.join(v['problems']) or '-'} |" for k, v in results.items()], ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=5, help="Kills per recipe.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work_dir", default="runs/kill_resume")
    parser.add_argument("--name", default="kill_resume")
    args = parser.parse_args(argv)
    from evals.lib.common import command_line, machine_info, write_results

    results = campaign(Path(args.work_dir), args.kills, args.seed)
    payload = {"command": command_line(), "machine": machine_info(), "kills": args.kills, "seed": args.seed,
               "results": results}
    write_results(args.name, payload, render(payload))
    print(render(payload))
    return 0 if all(v["ok"] for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
