"""The pre-registered policy-improvement test (evals/preregistration/policy_improvement.yaml): its test set.

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
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
from collections import Counter
from pathlib import Path

import yaml

from evals.lib.common import command_line, data_dir

from selfj_rlhf.core.errors import ConfigError
from selfj_rlhf.core.io import atomic_write_json, atomic_write_jsonl
from selfj_rlhf.data.datasets import LOCAL_FILES, iter_records

PLAN = Path(__file__).resolve().parent / "preregistration" / "policy_improvement.yaml"
NGRAM = 5
# the arena answer whose reference a question keeps (references differ between a question's rows)
ARENA_REFERENCE_MODEL = "gpt-4-0314"


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    draw = steps.add_parser("draw", help="Draw the plan's test set once.")
    draw.add_argument("--plan", default=str(PLAN))
    draw.add_argument("--data_dir", default=None, help="Converted data files (default: SELFJ_DATA_DIR).")
    draw.add_argument("--exclude", nargs="+", required=True, help="Prompt files of every earlier prompt.")
    draw.add_argument("--output_dir", default="runs/policy_improvement")
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
                    taken.append({"id": row["id"], "instruction": row["instruction"], "input": row.get("input") or "",
                                  "reference": row["reference"], "category": row.get("category"), "source": source,
                                  "long_reference": len(row["reference"]) >= long_chars})
            if len(taken) < wanted:
                raise ConfigError(f"{source}: {len(taken)} eligible prompts left after the exclusions, {wanted} wanted")
            picked += taken
    return picked


def draw(args) -> None:
    out = Path(args.output_dir)
    if (out / "draw.json").exists():
        raise SystemExit(f"{out / 'draw.json'} exists: the plan allows one draw")
    root = Path(args.data_dir) if args.data_dir else data_dir()
    if root is None:
        raise SystemExit("set SELFJ_DATA_DIR or pass --data_dir")
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


def main(argv=None):
    args = make_parser().parse_args(argv)
    if args.step == "draw":
        draw(args)


if __name__ == "__main__":
    main()
