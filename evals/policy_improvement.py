"""The pre-registered policy-improvement test (evals/preregistration/policy_improvement.yaml): its test set, the
rejection-sampling arms' candidates and the length-and-finished baseline. evals/policy_improvement.sh runs every
stage below in the plan's order, resumably, from `selfj data prepare` output (`DRY_RUN=1` prints its commands).

    python -m evals.policy_improvement draw --exclude $SELFJ_DATA_DIR/rl_prompts/prompts_judge_train.jsonl \
        $SELFJ_DATA_DIR/rl_prompts/prompts_train.jsonl $SELFJ_DATA_DIR/rl_prompts/prompts_heldout.jsonl \
        runs/improvement/heldout2/prompts_heldout.jsonl runs/probe_prompts/prompts_heldout.jsonl \
        runs/probe_prompts_confirm/prompts_heldout.jsonl runs/probe_prompts_final/prompts_heldout.jsonl \
        --output_dir runs/policy_improvement

(runs/improvement/heldout2 holds the 48 development prompts: evals/improvement.py's commands draw them again, from
the prompt files its first command and evals/own_samples.py's write.)

`draw` reads the plan's `test_set` section and nothing else decides the prompts: per source, the eligible rows
(reference at least `min_reference_chars`, instruction and input at most `max_instruction_chars`, GSM8K's train
split only, arena-bench v1 one row per question with its gpt-4-0314 reference), shuffled with the plan's seed, and
the first ones that are neither an excluded id nor a near-duplicate of an excluded instruction (at least half of
the candidate's word 5-grams in one excluded instruction; under five words, the same words). FLASK's share is
half rows whose reference has at least `long_reference_chars` characters, half the rest. The prompts file records
the plan's sha256 beside it (`draw.json`); a second draw into the same folder is refused, as the plan allows no
further draws.

The draw's committed record (evals/results/policy_improvement_draw.json) holds the drawn ids in order; in a new
checkout, `restore` rebuilds prompts.jsonl and draw.json from them and the data files, with no second draw (it
refuses a record of another plan, an id the data lacks, and a reference that changed its length stratum):

    python -m evals.policy_improvement restore

`arm-candidates` writes the rejection-sampling arms' inputs from the own-samples cycle's answers to the judge's 240
training prompts (8 each): `judge.jsonl`, scored by the plan's judge (its content hash checked), for arms a-c, and
`teacher.jsonl`, scored by the teacher's labels, for arm d. Each arm is then the recipe:

    accelerate launch recipes/rejection_sampling.py --config recipes/configs/rejection_sampling.yaml \
        --candidates_file runs/policy_improvement/rs_candidates/judge.jsonl --pick highest_score \
        --drop_unfinished true --num_train_epochs 3 --output_dir runs/policy_improvement/rs_a

(arm b: --pick random --pick_seed 43; arm c: --pick shortest; arm d: teacher.jsonl with --pick highest_score.)
The DPO arm pairs the same scored answers and trains at dpo.yaml's settings; GRPO is its recipe's YAML:

    python recipes/build_pairs.py --config recipes/configs/build_pairs_policy_improvement.yaml
    accelerate launch recipes/dpo.py --config recipes/configs/dpo.yaml \
        --pairs_file runs/policy_improvement/dpo_pairs/pairs.jsonl --num_train_epochs 3 \
        --output_dir runs/policy_improvement/dpo
    accelerate launch recipes/grpo.py --config recipes/configs/grpo_policy_improvement.yaml

`evaluate` answers the test prompts greedily at the plan's 256 tokens with each policy (resumable per prompt) and
writes each answer's measures against its reference, which no judge sees: MiniLM cosine, token F1, GSM8K exact match
of the final number, tokens and whether it finished before the cap:

    python -m evals.policy_improvement evaluate --policy base=smollm2-135m-instruct \
        --policy rs_a=runs/policy_improvement/rs_a/round-00/policy

`budget-check` is the plan's check before any test-set evaluation: the mean per-token log-probability of the 66
development prompts' reference answers under arm d's policy minus under the base policy; under 0.05 nats, every
rejection-sampling arm is retrained once with 6 epochs:

    python -m evals.policy_improvement budget-check --policy runs/policy_improvement/rs_d/round-00/policy

It came out under (-0.030 nats: arm d's 3-epoch policy fits the development references slightly worse than the base),
so the arms are the recipe's commands above with `--num_train_epochs 6` and output directories `rs_a_6ep`, `rs_b_6ep`,
`rs_c_6ep` and `rs_d_6ep`, evaluated as `--policy rs_a=runs/policy_improvement/rs_a_6ep/round-00/policy` and so on;
arm d's 6-epoch policy is checked again (`--output runs/policy_improvement/budget_check_6ep.json`) for the report.
Arm a's two rounds (the plan's second round: 8 new samples per training prompt from round 0's policy, picked by the
plan's judge) are one recipe run, `rs_a2` being its round-01 policy:

    accelerate launch recipes/rejection_sampling.py \
        --config recipes/configs/rejection_sampling_policy_improvement.yaml

`best-of-n` measures the best-of-n arm (recipes/configs/best_of_n_policy_improvement.yaml: 16 samples per test
prompt, scored by the plan's judge): at n = 4, 8 and 16 (each prompt's first n samples) the judge's pick, a random
pick (the mean over the n), the shortest finished answer (the shortest when none finished), the longest and the
length-and-finished baseline's pick, each written as an arm (`bon<n>_<pick>/measures.jsonl`) for the report:

    accelerate launch recipes/best_of_n.py --config recipes/configs/best_of_n_policy_improvement.yaml
    python -m evals.policy_improvement best-of-n
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

import yaml

from evals.lib.common import RESULTS_DIR, command_line, data_dir

from selfj_rlhf.core.errors import ConfigError
from selfj_rlhf.core.io import atomic_write_json, atomic_write_jsonl
from selfj_rlhf.data.datasets import LOCAL_FILES, iter_records

PLAN = Path(__file__).resolve().parent / "preregistration" / "policy_improvement.yaml"
NGRAM = 5
# the arena answer whose reference a question keeps (references differ between a question's rows)
ARENA_REFERENCE_MODEL = "gpt-4-0314"
GREEDY_MAX_NEW_TOKENS = 256  # the plan's evaluation: greedy answers of at most 256 new tokens


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    draw = steps.add_parser("draw", help="Draw the plan's test set once.")
    draw.add_argument("--plan", default=str(PLAN))
    draw.add_argument("--data_dir", default=None, help="Converted data files (default: SELFJ_DATA_DIR).")
    draw.add_argument("--exclude", nargs="+", required=True, help="Prompt files of every earlier prompt.")
    draw.add_argument("--output_dir", default="runs/policy_improvement")
    draw.add_argument("--result_name", default="policy_improvement_draw",
                      help="The committed record: evals/results/<name>.json and .md (empty: none).")
    restored = steps.add_parser("restore", help="Rebuild the drawn test set from its committed record (no draw).")
    restored.add_argument("--plan", default=str(PLAN))
    restored.add_argument("--record", default=str(RESULTS_DIR / "policy_improvement_draw.json"),
                          help="The draw's committed record, with the drawn ids.")
    restored.add_argument("--data_dir", default=None, help="Converted data files (default: SELFJ_DATA_DIR).")
    restored.add_argument("--output_dir", default="runs/policy_improvement")
    arms = steps.add_parser("arm-candidates", help="The rejection-sampling arms' candidates: the judge's training "
                                                   "prompts' samples scored by the plan's judge and by the teacher.")
    arms.add_argument("--plan", default=str(PLAN))
    arms.add_argument("--samples", default="runs/own_samples/pool.jsonl",
                      help="The own-samples cycle's answers (recipes/sample.py's pool.jsonl).")
    arms.add_argument("--labels", default="runs/labels_own_samples/labels_own_samples.jsonl",
                      help="Their teacher labels (recipes/label.py).")
    arms.add_argument("--judge", default=None, help="Default: the plan's judge by name; its hash must match.")
    arms.add_argument("--output_dir", default="runs/policy_improvement/rs_candidates")
    evaluate = steps.add_parser("evaluate", help="Greedy answers of each policy to the test prompts, measured.")
    evaluate.add_argument("--plan", default=str(PLAN))
    evaluate.add_argument("--prompts", default="runs/policy_improvement/prompts.jsonl",
                          help="The drawn test set (draw's prompts.jsonl; its draw.json must name this plan).")
    evaluate.add_argument("--policy", action="append", required=True, help="NAME=SPEC, one per policy.")
    evaluate.add_argument("--batch_size", type=int, default=8, help="Prompts per greedy generate call.")
    evaluate.add_argument("--output_dir", default="runs/policy_improvement/greedy")
    budget = steps.add_parser("budget-check", help="Arm d's log-probability change on the development references.")
    budget.add_argument("--plan", default=str(PLAN))
    budget.add_argument("--policy", required=True, help="Arm d's trained policy.")
    budget.add_argument("--base", default="smollm2-135m-instruct")
    budget.add_argument("--prompts", default=None,
                        help="The 66 development prompts (default: SELFJ_DATA_DIR/rl_prompts/prompts_heldout.jsonl).")
    budget.add_argument("--output", default="runs/policy_improvement/budget_check.json")
    bon = steps.add_parser("best-of-n", help="The best-of-n arm's picks at n = 4, 8, 16, measured, as arms.")
    bon.add_argument("--plan", default=str(PLAN))
    bon.add_argument("--prompts", default="runs/policy_improvement/prompts.jsonl")
    bon.add_argument("--candidates", default="runs/policy_improvement/best_of_n/candidates.jsonl",
                     help="The best-of-n recipe's scored candidates (16 per test prompt).")
    bon.add_argument("--samples", default="runs/own_samples/pool.jsonl",
                     help="The judge's training answers, for the length-and-finished baseline.")
    bon.add_argument("--labels", default="runs/labels_own_samples/labels_own_samples.jsonl",
                     help="Their teacher labels (the baseline is fitted on the judge's training labels).")
    bon.add_argument("--output_dir", default="runs/policy_improvement/greedy",
                     help="Where the arms go (the report reads every arm of this folder).")
    return parser


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def ngrams(tokens: list[str]) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + NGRAM]) for i in range(len(tokens) - NGRAM + 1)}


class NearDuplicates:
    """The excluded instructions, indexed by word 5-gram: ``covers(text)`` says whether one of them holds at least
    half of the text's 5-grams (texts under five words: whether one has the same words)."""

    def __init__(self, instructions):
        self.short = set()
        self.index: dict[tuple[str, ...], set[int]] = {}
        for position, text in enumerate(instructions):
            tokens = words(text)
            self.short.add(tuple(tokens))
            for gram in ngrams(tokens):
                self.index.setdefault(gram, set()).add(position)

    def covers(self, text: str) -> bool:
        tokens = words(text)
        grams = ngrams(tokens)
        if not grams:
            return tuple(tokens) in self.short
        hits = Counter(position for gram in grams for position in self.index.get(gram, ()))
        return bool(hits) and max(hits.values()) * 2 >= len(grams)


def prompt_text(row: dict) -> str:
    extra = (row.get("input") or "").strip()
    return f"{row['instruction']}\n\n{extra}" if extra else row["instruction"]


def arena_rows(path: str | Path) -> list[dict]:
    """One prompt row per arena-bench question: its instruction and the reference of its gpt-4-0314 row (else of
    its first row by id)."""
    questions: dict[str, list[dict]] = {}
    for _, row in iter_records(path):
        questions.setdefault(str(row["question_id"]), []).append(row)
    out = []
    for question, rows in sorted(questions.items()):
        rows.sort(key=lambda r: r["id"])
        keep = next((r for r in rows if r.get("model") == ARENA_REFERENCE_MODEL), rows[0])
        out.append({"id": f"arena-bench-v1:{question}", "instruction": keep["instruction"], "input": "",
                    "reference": keep["reference"], "category": "arena"})
    return out


def source_rows(source: str, root: Path) -> list[dict]:
    path = root / LOCAL_FILES[source]
    if source == "arena_bench_v1":
        return arena_rows(path)
    return [row for _, row in iter_records(path) if (row.get("meta") or {}).get("split", "train") == "train"]


def test_prompt(row: dict, source: str, long_chars: int) -> dict:
    """A data row as a row of the test set's prompts.jsonl."""
    return {"id": row["id"], "instruction": row["instruction"], "input": row.get("input") or "",
            "reference": row["reference"], "category": row.get("category"), "source": source,
            "long_reference": len(row["reference"]) >= long_chars}


def draw_test_set(test_set: dict, root: Path, excluded: list[dict], skipped: Counter | None = None) -> list[dict]:
    """The plan's prompts (see the module docstring), each with its ``source`` and ``long_reference`` flag;
    ``skipped`` counts the rows passed over as an excluded id or a near-duplicate."""
    skipped = Counter() if skipped is None else skipped
    excluded_ids = {row["id"] for row in excluded}
    duplicates = NearDuplicates(prompt_text(row) for row in excluded)
    long_chars = test_set["long_reference_chars"]
    picked = []
    for source, count in test_set["per_source"].items():
        rows = [row for row in source_rows(source, root)
                if len(row.get("reference") or "") >= test_set["min_reference_chars"]
                and len(prompt_text(row)) <= test_set["max_instruction_chars"]]
        random.Random(f"{test_set['seed']}:{source}").shuffle(rows)
        strata = ([(lambda r: len(r["reference"]) >= long_chars, count // 2),
                   (lambda r: len(r["reference"]) < long_chars, count - count // 2)] if source == "flask"
                  else [(lambda r: True, count)])
        for belongs, wanted in strata:
            taken = []
            for row in rows:
                if len(taken) == wanted:
                    break
                if not belongs(row):
                    continue
                if row["id"] in excluded_ids:
                    skipped["excluded id"] += 1
                elif duplicates.covers(prompt_text(row)):
                    skipped["near-duplicate"] += 1
                else:
                    taken.append(test_prompt(row, source, long_chars))
            if len(taken) < wanted:
                raise ConfigError(f"{source}: {len(taken)} eligible prompts left after the exclusions, {wanted} wanted")
            picked += taken
    return picked


def test_set_folders(args, refusal: str) -> tuple[Path, Path]:
    """The output folder, which must not hold a test set yet (``refusal`` says why), and the data folder."""
    out = Path(args.output_dir)
    if (out / "draw.json").exists():
        raise SystemExit(f"{out / 'draw.json'} exists: {refusal}")
    root = Path(args.data_dir) if args.data_dir else data_dir()
    if root is None:
        raise SystemExit("set SELFJ_DATA_DIR or pass --data_dir")
    return out, root


def draw(args) -> None:
    out, root = test_set_folders(args, "the plan allows one draw")
    plan_bytes = Path(args.plan).read_bytes()
    test_set = yaml.safe_load(plan_bytes)["test_set"]
    excluded = [row for path in args.exclude for _, row in iter_records(path)]
    skipped = Counter()
    prompts = draw_test_set(test_set, root, excluded, skipped)
    if len(prompts) != test_set["prompts"]:
        raise ConfigError(f"drew {len(prompts)} prompts, the plan names {test_set['prompts']}")
    atomic_write_jsonl(out / "prompts.jsonl", prompts)
    atomic_write_json(out / "draw.json", {
        "command": command_line(), "preregistration_sha256": hashlib.sha256(plan_bytes).hexdigest(),
        "prompts": len(prompts), "excluded_prompts": len(excluded), "skipped": dict(skipped),
        "per_source": dict(Counter(p["source"] for p in prompts)),
        "long_reference": sum(p["long_reference"] for p in prompts)})
    print(f"{len(prompts)} prompts written to {out / 'prompts.jsonl'}")
    if args.result_name:
        record_draw(out, args.result_name)


DRAW_KEYS = ("command", "preregistration_sha256", "prompts", "excluded_prompts", "skipped", "per_source",
             "long_reference")


def restore(args) -> None:
    """The drawn test set rebuilt from its committed record (the drawn ids, in order) and the data files: the same
    prompts in a new checkout, without a second draw. The record must follow this plan, and every id must be in
    the data with the stratum the draw gave it."""
    out, root = test_set_folders(args, "the test set is already there")
    plan_bytes = Path(args.plan).read_bytes()
    record = json.loads(Path(args.record).read_text())
    if record["preregistration_sha256"] != hashlib.sha256(plan_bytes).hexdigest():
        raise ConfigError(f"{args.record}: drawn under plan {record['preregistration_sha256'][:16]}, not {args.plan}")
    long_chars = yaml.safe_load(plan_bytes)["test_set"]["long_reference_chars"]
    sources = {prompt_source(prompt_id) for prompt_id in record["ids"]}
    rows = {row["id"]: test_prompt(row, source, long_chars) for source in sorted(sources)
            for row in source_rows(source, root)}
    missing = [prompt_id for prompt_id in record["ids"] if prompt_id not in rows]
    if missing:
        raise ConfigError(f"{args.record}: {len(missing)} drawn ids are not in the data under {root} "
                          f"(first: {missing[0]})")
    prompts = [rows[prompt_id] for prompt_id in record["ids"]]
    drawn_long = set(record["long_reference_ids"])
    changed = [p["id"] for p in prompts if p["long_reference"] != (p["id"] in drawn_long)]
    if changed:
        raise ConfigError(f"{args.record}: {len(changed)} references changed length stratum since the draw "
                          f"(first: {changed[0]})")
    atomic_write_jsonl(out / "prompts.jsonl", prompts)
    atomic_write_json(out / "draw.json", {**{key: record[key] for key in DRAW_KEYS}, "restored_from": args.record,
                                          "restored_by": command_line()})
    print(f"{len(prompts)} prompts written to {out / 'prompts.jsonl'}")


def record_draw(out: Path, name: str = "policy_improvement_draw") -> None:
    """The draw as a committed result: its record and the drawn ids (ids only: the prompts' text stays in the
    data files), so the test set is fixed in the history before any sample of it exists."""
    from evals.lib.common import machine_info, write_results

    record = json.loads((out / "draw.json").read_text())
    prompts = [row for _, row in iter_records(out / "prompts.jsonl")]
    payload = {**record, "machine": machine_info(), "ids": [p["id"] for p in prompts],
               "long_reference_ids": [p["id"] for p in prompts if p["long_reference"]],
               "note": DRAW_NOTE}
    lines = ["# The pre-registered test set, drawn", "", f"Command: `{record['command']}`  ",
             f"Plan sha256: `{record['preregistration_sha256']}`", "",
             f"{record['prompts']} prompts; the {record['excluded_prompts']} earlier prompts excluded by id and near "
             f"duplicate (rows skipped: {', '.join(f'{k} {v}' for k, v in record['skipped'].items()) or 'none'}); "
             f"{record['long_reference']} with a reference of at least 1,000 characters.", "",
             "| source | prompts | long reference |", "|---|---:|---:|"]
    for source, count in record["per_source"].items():
        long = sum(p["long_reference"] for p in prompts if p["source"] == source)
        lines.append(f"| {source} | {count} | {long} |")
    lines += ["", DRAW_NOTE, ""]
    write_results(name, payload, "\n".join(lines))


DRAW_NOTE = ("The 48 development prompts of evals/improvement.py's second held-out set were drawn again with its "
             "commands for the exclusion. Those commands now take GSM8K from its train split only, which the first "
             "draw did not, so its 16 GSM8K prompts may differ from the first draw's; a first-draw GSM8K prompt "
             "could then be in this set only by chance (about 0.1 prompts expected).")


def samples_by_prompt(path: str | Path) -> dict[str, list[dict]]:
    """The sampling stage's answers grouped by prompt (``question_id``), in file order."""
    groups: dict[str, list[dict]] = {}
    for _, row in iter_records(path):
        groups.setdefault(str(row["question_id"]), []).append(row)
    return groups


def candidates_row(prompt_id: str, samples: list[dict], scores: list[float]) -> dict:
    """One prompt's answers in best-of-n's ``candidates`` format (what the rejection-sampling recipe reads)."""
    return {"id": prompt_id, "instruction": samples[0]["instruction"], "reference": samples[0]["reference"],
            "candidates": [{"text": row["response"], "score": float(score), "num_tokens": int(row["num_tokens"]),
                            "finished": bool(row["finished"]), "sample_id": row["id"]}
                           for row, score in zip(samples, scores)]}


def arm_candidates(args) -> None:
    """Two candidates files of the same answers, ``judge.jsonl`` (the plan's judge's scores, arms a-c) and
    ``teacher.jsonl`` (the teacher's labels, arm d), for ``recipes/rejection_sampling.py --candidates_file``. The
    judge's scores are written per prompt as they come (a killed run resumes without rescoring)."""
    from tqdm.auto import tqdm

    from selfj_rlhf.core.io import ShardWriter, read_shards
    from selfj_rlhf.judge.directory import judge_identity
    from selfj_rlhf.judge.self_judge import SelfJudge

    plan_bytes = Path(args.plan).read_bytes()
    planned = yaml.safe_load(plan_bytes)["judge"]
    judge_spec = args.judge or planned["name"]
    identity = judge_identity(judge_spec)
    if identity["hash"] != planned["content_hash"]:
        raise ConfigError(f"judge {judge_spec} has content hash {identity['hash']}, the plan names "
                          f"{planned['content_hash']}")
    groups = samples_by_prompt(args.samples)
    labels = {row["id"]: row["score_label"] for _, row in iter_records(args.labels)}
    missing = [row["id"] for rows in groups.values() for row in rows if row["id"] not in labels]
    if missing:
        raise ConfigError(f"{args.labels}: no label for {len(missing)} samples, first {missing[0]}")
    out = Path(args.output_dir)
    shard = out / "judge_scores"
    done = read_shards(shard) if shard.is_dir() else {}
    todo = [prompt for prompt in groups if prompt not in done]
    if todo:
        judge = SelfJudge.from_pretrained(judge_spec)
        with ShardWriter(shard / "part-000.jsonl") as writer:
            for prompt in tqdm(todo, desc="judge scores", unit="prompt"):
                rows = groups[prompt]
                scores = judge.score([r["instruction"] for r in rows], [r["response"] for r in rows])
                writer.write({"id": prompt, "scores": scores})
        done = read_shards(shard)
    atomic_write_jsonl(out / "judge.jsonl", [candidates_row(p, rows, done[p]["scores"]) for p, rows in groups.items()])
    atomic_write_jsonl(out / "teacher.jsonl",
                       [candidates_row(p, rows, [labels[r["id"]] for r in rows]) for p, rows in groups.items()])
    atomic_write_json(out / "summary.json", {
        "command": command_line(), "preregistration_sha256": hashlib.sha256(plan_bytes).hexdigest(),
        "judge": identity, "prompts": len(groups), "answers": sum(len(rows) for rows in groups.values()),
        "unfinished": sum(not r["finished"] for rows in groups.values() for r in rows)})
    print(f"{len(groups)} prompts: {out / 'judge.jsonl'}, {out / 'teacher.jsonl'}")


def length_and_finished_model(samples: str | Path, labels: str | Path, margin: float = 1.0):
    """The plan's length-and-finished baseline: a Bradley-Terry model on (log tokens, finished) fitted on the
    teacher's labels of the judge's training answers (the honest rows: pairs of one prompt's answers whose labels
    differ by at least ``margin``, as the judge's own pairs). Returns ``score(num_tokens, finished) -> float``."""
    import math

    import numpy as np
    from sklearn.linear_model import LogisticRegression

    label = {row["id"]: row["score_label"] for _, row in iter_records(labels) if row.get("kind", "pool") == "pool"}
    differences = []
    for rows in samples_by_prompt(samples).values():
        rows = [r for r in rows if r["id"] in label]
        features = {r["id"]: np.array([math.log1p(r["num_tokens"]), float(r["finished"])]) for r in rows}
        for a in rows:
            for b in rows:
                if label[a["id"]] - label[b["id"]] >= margin:
                    differences += [features[a["id"]] - features[b["id"]], features[b["id"]] - features[a["id"]]]
    if not differences:
        raise ConfigError(f"{labels}: no pair of labelled answers differs by {margin}")
    x = np.array(differences)
    y = np.tile([1, 0], len(differences) // 2)
    weights = LogisticRegression(fit_intercept=False).fit(x, y).coef_[0]
    return lambda num_tokens, finished: float(weights @ np.array([math.log1p(num_tokens), float(finished)]))


def prompt_source(prompt_id: str) -> str:
    """The plan's source name of a test prompt id (``arena-bench-v1:...`` -> ``arena_bench_v1``)."""
    return prompt_id.split(":", 1)[0].replace("-", "_")


def answer_measures(prompt, answers: list[dict], embedder, long_reference_chars: int) -> list[dict]:
    """Each of one prompt's answers measured against its reference (the plan's metrics; the reference embedded once
    for all of them), with the strata the prompt falls in."""
    from evals.lib.metrics import final_number, reference_answer
    from selfj_rlhf.training.labeling import cosine_similarities, token_f1

    source = prompt_source(prompt.id)
    cosines = cosine_similarities(embedder, [answer["text"] for answer in answers], prompt.reference)
    return [{"id": prompt.id, "source": source, "long_reference": len(prompt.reference) >= long_reference_chars,
             "cosine": cosine, "f1": token_f1(answer["text"], prompt.reference),
             "exact_match": (float(final_number(answer["text"]) == reference_answer(prompt.reference))
                             if source == "gsm8k" else None),
             "num_tokens": answer["num_tokens"], "finished": answer["finished"]}
            for answer, cosine in zip(answers, cosines)]


def evaluate(args) -> None:
    """Each policy's greedy answers (``<output_dir>/<name>/answers.jsonl``) and their measures
    (``measures.jsonl``, with ``summary.json`` recording the plan's sha256)."""
    from evals.lib.greedy import greedy_answers
    from selfj_rlhf.data.prompts import load_prompts
    from selfj_rlhf.training.labeling import load_embedder

    plan_bytes = Path(args.plan).read_bytes()
    plan_sha = hashlib.sha256(plan_bytes).hexdigest()
    drawn = json.loads((Path(args.prompts).parent / "draw.json").read_text())
    if drawn["preregistration_sha256"] != plan_sha:
        raise ConfigError(f"{args.prompts}: drawn under plan {drawn['preregistration_sha256'][:16]}, not "
                          f"{args.plan} ({plan_sha[:16]})")
    long_chars = yaml.safe_load(plan_bytes)["test_set"]["long_reference_chars"]
    policies = [item.split("=", 1) for item in args.policy]
    if any(len(item) != 2 or not all(item) for item in policies):
        raise ConfigError(f"--policy takes NAME=SPEC, got {args.policy}")
    prompts = load_prompts(args.prompts)
    embedder = load_embedder("all-minilm-l6-v2", "cpu")
    for name, spec in policies:
        out = Path(args.output_dir) / name
        answers = greedy_answers(spec, prompts, out, max_new_tokens=GREEDY_MAX_NEW_TOKENS,
                                 batch_size=args.batch_size, desc=f"greedy {name}")
        measures = [row for prompt, answer in zip(prompts, answers)
                    for row in answer_measures(prompt, [answer], embedder, long_chars)]
        atomic_write_jsonl(out / "measures.jsonl", measures)
        atomic_write_json(out / "summary.json", {
            "command": command_line(), "preregistration_sha256": plan_sha, "policy": spec, "prompts": len(prompts),
            "max_new_tokens": GREEDY_MAX_NEW_TOKENS,
            **{key: sum(m[key] for m in measures) / len(measures) for key in ("cosine", "f1", "num_tokens")},
            "cut_at_cap": sum(not m["finished"] for m in measures) / len(measures)})
        print(f"{name}: {out / 'measures.jsonl'}")


BUDGET_MIN_NATS = 0.05  # the plan's budget_check: under this, every arm is retrained once with 6 epochs


def reference_log_probs(spec: str, prompts) -> list[float]:
    """Per prompt, the mean log-probability per token of its reference answer after the policy's chat prompt."""
    import torch
    from tqdm.auto import tqdm

    from selfj_rlhf.core.generation import chat_prompt_ids
    from selfj_rlhf.core.models import load_causal_lm

    model, tokenizer = load_causal_lm(spec)
    model.eval()
    out = []
    for prompt in tqdm(prompts, desc=f"log-probs {Path(spec).name}", unit="prompt"):
        context = chat_prompt_ids(tokenizer, prompt.instruction)
        answer = tokenizer.encode(prompt.reference, add_special_tokens=False)
        ids = torch.tensor([context + answer])
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, len(context) - 1:-1].float()
        out.append(float(torch.log_softmax(logits, -1).gather(1, torch.tensor(answer)[:, None]).mean()))
    return out


def budget_check(args) -> None:
    from selfj_rlhf.data.prompts import load_prompts

    plan_bytes = Path(args.plan).read_bytes()
    if not args.prompts and data_dir() is None:
        raise ConfigError("budget-check: give --prompts or set SELFJ_DATA_DIR")
    path = args.prompts or str(data_dir() / "rl_prompts" / "prompts_heldout.jsonl")
    prompts = [p for p in load_prompts(path) if p.reference and p.reference.strip()]
    base, trained = reference_log_probs(args.base, prompts), reference_log_probs(args.policy, prompts)
    change = sum(t - b for t, b in zip(trained, base)) / len(prompts)
    record = {"command": command_line(), "preregistration_sha256": hashlib.sha256(plan_bytes).hexdigest(),
              "policy": args.policy, "base": args.base, "prompts": len(prompts),
              "mean_log_prob_per_token": {"base": sum(base) / len(base), "policy": sum(trained) / len(trained)},
              "change_nats": change, "minimum_nats": BUDGET_MIN_NATS, "retrain_with_6_epochs": change < BUDGET_MIN_NATS}
    atomic_write_json(args.output, record)
    print(f"arm d moved the development references' log-probability by {change:+.4f} nats per token "
          f"({'under' if change < BUDGET_MIN_NATS else 'at least'} {BUDGET_MIN_NATS}): {args.output}")


BON_SIZES = (4, 8, 16)  # the plan's picks_at


def best_of_n_picks(candidates: list[dict], n: int, baseline) -> dict[str, list[int]]:
    """Per pick, the indices among the first ``n`` candidates whose measures it takes (random: all n, averaged)."""
    first = candidates[:n]
    finished = [i for i, c in enumerate(first) if c["finished"]] or list(range(len(first)))
    return {"judge": [max(range(len(first)), key=lambda i: (first[i]["score"], -i))],
            "random": list(range(len(first))),
            "shortest": [min(finished, key=lambda i: (first[i]["num_tokens"], i))],
            "longest": [max(range(len(first)), key=lambda i: (first[i]["num_tokens"], -i))],
            "length_and_finished": [max(range(len(first)),
                                        key=lambda i: (baseline(first[i]["num_tokens"], first[i]["finished"]), -i))]}


def best_of_n(args) -> None:
    """``bon<n>_<pick>`` arms from the best-of-n candidates: each answer measured once, each pick's measures (the
    random pick: the mean of the n) per prompt, with the plan's sha256 in each arm's summary."""
    from selfj_rlhf.data.prompts import load_prompts
    from selfj_rlhf.training.labeling import load_embedder

    plan_bytes = Path(args.plan).read_bytes()
    plan = yaml.safe_load(plan_bytes)
    prompts = load_prompts(args.prompts)
    rows = {row["id"]: row for _, row in iter_records(args.candidates)}
    missing = [p.id for p in prompts if p.id not in rows]
    if missing:
        raise ConfigError(f"{args.candidates}: no candidates for {len(missing)} test prompts, first {missing[0]}")
    wanted = plan["arms"]["best_of_n"]["samples_per_prompt"]
    short = [p.id for p in prompts if len(rows[p.id]["candidates"]) < wanted]
    if short:
        raise ConfigError(f"{args.candidates}: fewer than {wanted} candidates for {short[0]}")
    baseline = length_and_finished_model(args.samples, args.labels)
    embedder = load_embedder("all-minilm-l6-v2", "cpu")
    long_chars = plan["test_set"]["long_reference_chars"]
    measured = {}
    for prompt in prompts:
        candidates = rows[prompt.id]["candidates"][:wanted]
        answers = [{"text": c["text"], "num_tokens": c["num_tokens"], "finished": c["finished"]} for c in candidates]
        measured[prompt.id] = answer_measures(prompt, answers, embedder, long_chars)
    keys = ("cosine", "f1", "num_tokens", "finished")
    for n in BON_SIZES:
        arms: dict[str, list[dict]] = {}
        for prompt in prompts:
            per_answer = measured[prompt.id]
            for pick, chosen in best_of_n_picks(rows[prompt.id]["candidates"][:wanted], n, baseline).items():
                row = {**per_answer[chosen[0]], **{k: sum(float(per_answer[i][k]) for i in chosen) / len(chosen)
                                                  for k in keys}}
                if row["exact_match"] is not None:
                    row["exact_match"] = sum(per_answer[i]["exact_match"] for i in chosen) / len(chosen)
                arms.setdefault(f"bon{n}_{pick}", []).append(row)
        for name, arm_rows in arms.items():
            out = Path(args.output_dir) / name
            atomic_write_jsonl(out / "measures.jsonl", arm_rows)
            atomic_write_json(out / "summary.json", {
                "command": command_line(), "preregistration_sha256": hashlib.sha256(plan_bytes).hexdigest(),
                "candidates": args.candidates, "n": n, "prompts": len(arm_rows)})
    print(f"best-of-n arms at n = {BON_SIZES}: {args.output_dir}")


def main(argv=None):
    args = make_parser().parse_args(argv)
    if args.step == "draw":
        draw(args)
    elif args.step == "restore":
        restore(args)
    elif args.step == "arm-candidates":
        arm_candidates(args)
    elif args.step == "evaluate":
        evaluate(args)
    elif args.step == "best-of-n":
        best_of_n(args)
    elif args.step == "budget-check":
        budget_check(args)


if __name__ == "__main__":
    main()
