"""Bad-input fuzzing of every file reader and config parser: each case must end in a clear error that
names the file (and the line, and the field where there is one), or be accepted as valid; never a crash
(any other exception) and never a half-written output.

    python -m evals.fuzz_inputs --random_cases 2000      # the larger run (results in evals/results/fuzz.md)
    (tests/test_fuzz.py runs the fixed cases plus 60 random ones in CI)

Readers: prompts (best-of-n, labelling, GRPO), labels (judge training), scored candidates (pair
building), AlpacaEval outputs. Fixed cases: malformed JSON, invalid UTF-8, non-object rows, missing /
mistyped / empty / huge / null fields, extra fields, duplicate ids, NaN and infinite scores, empty files.
Random cases (seeded): a random field of a random row replaced by a random JSON value or deleted, or random
bytes spliced into the file. Config cases: unknown YAML keys for every recipe, conflicting or invalid
flags, unknown model names.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path


from selfj_rlhf.core.errors import SelfJError


def _prompts(path):
    from selfj_rlhf.data.prompts import load_prompts

    return load_prompts(str(path))


def _labels(path):
    from selfj_rlhf.training.distill import JudgeTrainingConfig
    from selfj_rlhf.training.train_judge import load_label_rows

    return load_label_rows(JudgeTrainingConfig(labels=str(path)))


def _scored(path):
    from selfj_rlhf.rlhf.pairs import load_scored_prompts

    return load_scored_prompts(path)


def _outputs(path):
    from selfj_rlhf.rlhf.alpacaeval import load_outputs

    return load_outputs(path, role="model")


# reader, a valid row for index i, the required fields (with a wrong-typed value), the id field
READERS = {
    "prompts": (_prompts, lambda i: {"id": f"p{i}", "instruction": f"Question {i}?", "reference": f"Answer {i}."},
                {"instruction": 7}, "id"),
    "labels": (_labels, lambda i: {"instruction": f"Q{i}?", "reference": f"R{i}.", "response": f"A{i}.", "label": i % 10},
               {"instruction": ["x"], "reference": 3, "response": {"a": 1}, "label": "high"}, None),
    "scored_candidates": (_scored, lambda i: {"id": f"s{i}", "instruction": f"Q{i}?", "candidates": [
        {"text": "good", "score": 7.5, "num_tokens": 3}, {"text": "bad", "score": 1.0}]},
        {"instruction": 5, "candidates": "nope"}, "id"),
    "alpaca_outputs": (_outputs, lambda i: {"instruction": f"Instruction {i}", "output": f"Output {i}",
                                            "generator": "m"}, {"instruction": 1.5, "output": None}, None),
}


def fixed_mutations(reader: str) -> list[tuple[str, callable]]:
    """(name, rows -> file bytes) for the fixed cases; row 2 (line 2) is the one damaged."""
    _, _, typed, id_field = READERS[reader]
    dump = lambda rows: "".join(json.dumps(r, allow_nan=True) + "\n" for r in rows).encode()  # noqa: E731

    def edit(fn):
        def apply(rows):
            rows = [dict(r) for r in rows]
            fn(rows[1])
            return dump(rows)
        return apply

    cases = [
        ("malformed JSON line", lambda rows: dump(rows[:1]) + b'{"instruction": "cut off\n' + dump(rows[2:])),
        ("invalid UTF-8", lambda rows: dump(rows[:1]) + b'{"instruction": "\xff\xfe"}\n' + dump(rows[2:])),
        ("row is a list", lambda rows: dump(rows[:1]) + b"[1, 2]\n" + dump(rows[2:])),
        ("row is a number", lambda rows: dump(rows[:1]) + b"42\n" + dump(rows[2:])),
        ("empty file", lambda rows: b""),
        ("only blank lines", lambda rows: b"\n\n  \n"),
        ("extra field", edit(lambda r: r.update(unexpected_field={"nested": [1, 2]}))),
        ("huge string", edit(lambda r: r.update({next(iter(typed)): "x" * 1_000_000}))),
    ]
    for name, wrong in typed.items():
        cases += [(f"missing '{name}'", edit(lambda r, n=name: r.pop(n))),
                  (f"null '{name}'", edit(lambda r, n=name: r.update({n: None}))),
                  (f"mistyped '{name}'", edit(lambda r, n=name, w=wrong: r.update({n: w}))),
                  (f"empty '{name}'", edit(lambda r, n=name: r.update({n: ""})))]
    if id_field:
        cases += [("duplicate id", edit(lambda r: r.update({id_field: "p0" if reader == "prompts" else "s0"}))),
                  ("boolean id", edit(lambda r: r.update({id_field: True})))]
    if reader == "scored_candidates":
        for value in ("NaN", "Infinity", "-Infinity"):
            cases.append((f"{value} score", lambda rows, v=value: dump(rows[:1]).replace(b"7.5", v.encode())
                          + dump(rows[1:])))
        cases.append(("candidate not an object", edit(lambda r: r.update(candidates=["text"]))))
    if reader == "labels":
        cases += [("label out of range", edit(lambda r: r.update(label=12))),
                  ("fractional label", edit(lambda r: r.update(label=3.5))),
                  ("NaN label", lambda rows: dump(rows[:1]).replace(b'"label": 0', b'"label": NaN') + dump(rows[1:]))]
    return cases


RANDOM_VALUES = [None, True, 0, -1, 3.25, float("nan"), float("inf"), "", " ", "text", "\u0000\ud7ff", [], [1, "a"],
                 {}, {"k": "v"}, "9" * 300]


def random_mutation(rng: random.Random):
    def apply(rows):
        rows = [dict(r) for r in rows]
        kind = rng.random()
        row = rng.choice(rows)
        if kind < 0.45 and row:
            row[rng.choice(sorted(row))] = rng.choice(RANDOM_VALUES)
        elif kind < 0.7 and row:
            row.pop(rng.choice(sorted(row)))
        elif kind < 0.85:
            row[rng.choice(["id", "instruction", "output", "score", "candidates", "x"])] = rng.choice(RANDOM_VALUES)
        data = bytearray("".join(json.dumps(r, allow_nan=True) + "\n" for r in rows).encode())
        if kind >= 0.85:
            position = rng.randrange(len(data))
            data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        return bytes(data)
    return apply


def classify(reader: str, content: bytes, directory: Path) -> tuple[str, str]:
    """Run one reader on one file: ("error: located" | "accepted" | "CRASH ...", message)."""
    path = directory / ("outputs.json" if reader == "alpaca_outputs" else f"{reader}.jsonl")
    if reader == "alpaca_outputs":  # AlpacaEval files are JSON lists: convert the JSONL rows when they parse
        try:
            content = json.dumps([json.loads(line) for line in content.decode().splitlines() if line.strip()],
                                 allow_nan=True).encode()
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
    path.write_bytes(content)
    try:
        READERS[reader][0](path)
    except SelfJError as err:
        message = str(err)
        if str(path) not in message:
            return "ERROR WITHOUT FILE", message
        located = "error: names file" + (" and line" if re.search(re.escape(str(path)) + r":\d+", message) else "")
        return located, message.replace(str(directory), "<tmp>")  # results stay free of machine paths
    except Exception as err:  # noqa: BLE001  (anything else is the bug this harness looks for)
        return f"CRASH {type(err).__name__}", str(err)[:300]
    return "accepted", ""


def config_cases() -> list[tuple[str, str, str]]:
    """(target, case, outcome) for recipe YAML keys, flags and model names, through each recipe's parser."""
    import importlib.util

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for script in sorted(recipes.glob("*.py")):
            spec = importlib.util.spec_from_file_location(f"fuzz_{script.stem}", script)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            bad = Path(tmp) / f"{script.stem}.yaml"
            bad.write_text("not_a_field: 1\n")
            results.append((f"recipe {script.stem}", "unknown YAML key", _outcome(
                lambda: module.make_parser().parse_args_and_config(["--config", str(bad)]), str(bad))))
    from selfj_rlhf.rlhf.best_of_n import BestOfNConfig
    from selfj_rlhf.core.models import validate_model_spec
    from selfj_rlhf.rlhf.pairs import PairConfig
    from selfj_rlhf.rlhf.rounds import LoopConfig

    for name, fn in [("n = 0", lambda: BestOfNConfig(n=0)), ("top_p = 2", lambda: BestOfNConfig(top_p=2.0)),
                     ("backend = tpu", lambda: BestOfNConfig(backend="tpu")),
                     ("length_penalty without length_aware", lambda: PairConfig(length_penalty=1.0)),
                     ("rounds = 0", lambda: LoopConfig(rounds=0)), ("n = 1 for a loop", lambda: LoopConfig(n=1)),
                     ("unknown model alias", lambda: validate_model_spec("smollm-9000")),
                     ("missing model directory", lambda: validate_model_spec("./no/such/model"))]:
        results.append(("config", name, _outcome(fn, None)))
    return results


def _outcome(fn, must_name: str | None) -> str:
    try:
        fn()
    except SelfJError as err:
        return "error: names file" if must_name is None or must_name in str(err) else "ERROR WITHOUT FILE"
    except SystemExit as err:
        return f"argparse exit {err.code}"
    except Exception as err:  # noqa: BLE001
        return f"CRASH {type(err).__name__}: {str(err)[:200]}"
    return "accepted"


def run_campaign(random_cases: int, seed: int) -> dict:
    rng = random.Random(seed)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for reader, (_, valid, _, _) in READERS.items():
            rows = [valid(i) for i in range(3)]
            cases = fixed_mutations(reader) + [(f"random #{k}", random_mutation(rng)) for k in range(random_cases)]
            for name, mutate in cases:
                outcome, message = classify(reader, mutate(rows), directory)
                records.append({"target": reader, "case": name, "outcome": outcome, "message": message[:300]})
    for target, case, outcome in config_cases():
        records.append({"target": target, "case": case, "outcome": outcome, "message": ""})
    counts = Counter(r["outcome"] for r in records)
    return {"cases": len(records), "outcomes": dict(counts), "records": records,
            "failures": [r for r in records if r["outcome"].startswith(("CRASH", "ERROR WITHOUT"))]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random_cases", type=int, default=2000, help="Random mutations per reader.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="fuzz")
    args = parser.parse_args(argv)
    from evals.lib.common import command_line, machine_info, write_results

    result = run_campaign(args.random_cases, args.seed)
    fixed = [r for r in result["records"] if not r["case"].startswith("random")]
    by_target = Counter((r["target"], r["outcome"]) for r in result["records"])
    m = machine_info()
    lines = [f"# Bad-input fuzzing: {result['cases']} cases", "", f"Command: `{command_line()}`  ",
             f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['date']}", "",
             "| outcome | cases |", "|---|---:|", *[f"| {k} | {v} |" for k, v in sorted(result["outcomes"].items())],
             "", "| target | outcome | cases |", "|---|---|---:|",
             *[f"| {t} | {o} | {n} |" for (t, o), n in sorted(by_target.items())], "",
             "Fixed cases (the message a user sees):", "", "| target | case | outcome | message |", "|---|---|---|---|",
             *[f"| {r['target']} | {r['case']} | {r['outcome']} | {r['message'][:110].replace('|', '/')} |"
               for r in fixed], ""]
    if result["failures"]:
        lines += ["## Failures", "", *[f"- {r}" for r in result["failures"][:50]], ""]
    write_results(args.name, {"command": command_line(), "machine": m, "seed": args.seed,
                              **{k: v for k, v in result.items() if k != "records"},
                              "fixed_cases": fixed}, "\n".join(lines))
    print("\n".join(lines[:12 + len(result["outcomes"])]))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
