"""How often the echo guard (selfj_rlhf.judge.echo_guard) fires on honest answers, and on echoes.

    python -m evals.echo_guard

Honest answers: every answer of the project's data with its instruction (and input): arena-bench v1's graded answers
(all models, all grades), both answers of every LLMBar pair, and the reference answers of FLASK, GPTeacher codegen
and GSM8K. A guard that fires on an honest answer floors it to the bottom of the scale, so its rate here is the
guard's cost; each firing is listed (its instruction's and answer's first characters) to read what it caught. Echoes:
each instruction given back as its own answer, the probe's attack. No model runs: the guard reads words only.
"""

from __future__ import annotations

import argparse

from evals.lib.common import command_line, default_data, machine_info, write_results
from evals.policy_improvement import prompt_text
from selfj_rlhf.data.datasets import iter_records
from selfj_rlhf.judge.echo_guard import EchoGuard

REFERENCE_SOURCES = ("flask", "gpteacher_codegen", "gsm8k")


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for source in ("arena_bench_v1", "llmbar", *REFERENCE_SOURCES):
        parser.add_argument(f"--{source}", default=default_data(source))
    parser.add_argument("--name", default="echo_guard")
    return parser


def honest_answers(args) -> list[tuple[str, str, str, str]]:
    """(source, instruction, answer, what the source says of the answer) of every honest answer (see the module
    docstring); the grade or preference is only reported beside a firing."""
    rows = [("arena_bench_v1", row["instruction"], row["response"], f"GPT-4 grade {row['score']}")
            for _, row in iter_records(args.arena_bench_v1)]
    for _, row in iter_records(args.llmbar):
        rows += [("llmbar", row["instruction"], row[f"response_{side}"],
                  "preferred" if row["preference"] == side else "not preferred") for side in ("a", "b")]
    for source in REFERENCE_SOURCES:
        rows += [(source, prompt_text(row), row["reference"], "reference")
                 for _, row in iter_records(getattr(args, source))]
    return rows


def measure(rows: list[tuple[str, str, str, str]], guard: EchoGuard) -> dict:
    per_source: dict[str, dict] = {}
    fired = []
    for source, instruction, answer, note in rows:
        entry = per_source.setdefault(source, {"answers": 0, "fired": 0, "echoes_caught": 0})
        entry["answers"] += 1
        if guard.echoes(instruction, answer):
            entry["fired"] += 1
            fired.append({"source": source, "note": note, "instruction": instruction[:120], "answer": answer[:120]})
        entry["echoes_caught"] += guard.echoes(instruction, instruction)  # each row's instruction as its answer
    total = {key: sum(entry[key] for entry in per_source.values()) for key in ("answers", "fired", "echoes_caught")}
    return {"per_source": per_source, "total": total, "fired": fired}


def render(payload: dict) -> str:
    m = payload["machine"]
    g = payload["guard"]
    lines = ["# The echo guard on honest answers and on echoes", "", f"Command: `{payload['command']}`  ",
             f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['date']}", "",
             f"Guard: word {g['n']}-grams, fires when at least {g['min_copied']:.0%} of the answer's are in the "
             f"instruction and at least {g['min_coverage']:.0%} of the instruction's are in the answer.", "",
             "| source | honest answers | guard fired | echoes caught |", "|---|---:|---:|---:|"]
    for source, entry in [*payload["per_source"].items(), ("all", payload["total"])]:
        lines.append(f"| {source} | {entry['answers']:,} | {entry['fired']:,} ({entry['fired'] / entry['answers']:.2%})"
                     f" | {entry['echoes_caught']:,} of {entry['answers']:,} |")
    lines += ["", "Honest answers the guard fired on (first 120 characters):", ""]
    lines += [f"- {f['source']} ({f['note']}): {f['instruction']!r} -> {f['answer']!r}" for f in payload["fired"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = make_parser().parse_args(argv)
    guard = EchoGuard()
    payload = {"command": command_line(), "machine": machine_info(), "guard": guard.to_dict(),
               **measure(honest_answers(args), guard)}
    write_results(args.name, payload, render(payload))
    print(render(payload))


if __name__ == "__main__":
    main()
