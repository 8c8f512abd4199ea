"""CPU judge-scoring benchmark: int8 vs fp32 (speed and score drift), achieved FLOP/s against the measured
matmul peak, peak memory, and how time grows with the number of items and of processes.

    python -m evals.bench_cpu --num_items 32

Items: arena-bench answers (instruction + answer cut to ``--answer_tokens``), the same for every method.
All figures come from this one run on this machine: methods are interleaved (best of ``--repeats``), the
matmul peak is a large fp32 ``torch.mm`` timed in the same process. FLOPs per item: 2 x (matmul parameters) x
tokens + 2 x layers x tokens^2 x hidden (causal attention scores and values). Peak memory is the resident
set size sampled every 10 ms while a method runs. The process-scaling rows run 1 and 2 worker processes
(threads split evenly) on the same items, each scoring its share; time is the slowest worker's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from evals.lib.timing import interleaved_best_times
from evals.lib.common import REPO_ROOT, command_line, default_data, machine_info, scoring_flops, write_results


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", default="selfj-smollm2-135m")
    parser.add_argument("--arena", default=default_data("arena_bench_v1"))
    parser.add_argument("--num_items", type=int, default=32)
    parser.add_argument("--answer_tokens", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_length", type=int, default=1024, help="Judge prompt cap (the shipped judge's is 1,024).")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--name", default="bench_cpu")
    parser.add_argument("--worker", nargs=3, metavar=("RANK", "WORLD", "OUT"), help=argparse.SUPPRESS)
    return parser


def load_items(args, tokenizer) -> tuple[list[str], list[str]]:
    from selfj_rlhf.data.datasets import iter_records

    rows = [row for _, row in iter_records(args.arena)][: args.num_items * 7: 7]  # spread over questions
    cut = [tokenizer.decode(tokenizer.encode(r["response"], add_special_tokens=False)[: args.answer_tokens]) for r in rows]
    return [r["instruction"][:2000] for r in rows], cut


def matmul_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * size**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_rss_during(fn) -> tuple[float, int]:
    """(seconds, peak resident set size in bytes) of ``fn``."""
    import psutil

    process, peak, running = psutil.Process(), [0], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    seconds = _timed(fn)
    running[0] = False
    thread.join()
    return seconds, peak[0]


def run_worker(args) -> None:
    """Score this rank's share of the items; write {"seconds": ...} to OUT."""
    from selfj_rlhf import SelfJudge

    rank, world, out = int(args.worker[0]), int(args.worker[1]), args.worker[2]
    judge = SelfJudge.from_pretrained(args.judge, max_length=args.max_length)
    instructions, responses = load_items(args, judge.tokenizer)
    mine = list(range(rank, len(instructions), world))
    judge.score([instructions[i] for i in mine[:2]], [responses[i] for i in mine[:2]])  # warm-up
    seconds = _timed(lambda: judge.score([instructions[i] for i in mine], [responses[i] for i in mine],
                                         batch_size=args.batch_size))
    Path(out).write_text(json.dumps({"seconds": seconds, "items": len(mine)}))


def process_scaling(args, world: int) -> float:
    threads = max(1, (os.cpu_count() or 1) // world)
    with tempfile.TemporaryDirectory() as tmp:
        workers = [subprocess.Popen([sys.executable, "-m", "evals.bench_cpu", "--judge", args.judge, "--arena", args.arena,
                                     "--num_items", str(args.num_items), "--answer_tokens", str(args.answer_tokens),
                                     "--batch_size", str(args.batch_size), "--max_length", str(args.max_length), "--worker", str(rank), str(world),
                                     f"{tmp}/{rank}.json"], cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
                   for rank in range(world)]
        for worker in workers:
            if worker.wait() != 0:
                raise RuntimeError(f"benchmark worker exited with {worker.returncode}")
        return max(json.loads(Path(f"{tmp}/{rank}.json").read_text())["seconds"] for rank in range(world))


def main(argv=None):
    args = make_parser().parse_args(argv)
    if args.worker:
        return run_worker(args)
    from scipy.stats import spearmanr

    from selfj_rlhf import SelfJudge

    judges = {"fp32": SelfJudge.from_pretrained(args.judge, max_length=args.max_length),
              "int8": SelfJudge.from_pretrained(args.judge, max_length=args.max_length, quantize="int8")}
    instructions, responses = load_items(args, judges["fp32"].tokenizer)
    token_counts = [len(judges["fp32"].encode(i, r).input_ids) for i, r in zip(instructions, responses)]
    tokens = sum(token_counts)
    flops = scoring_flops(judges["fp32"].model, token_counts)
    scores = {name: j.score(instructions, responses, batch_size=args.batch_size) for name, j in judges.items()}
    peak = matmul_peak_flops()
    times = interleaved_best_times({name: (lambda j=j: j.score(instructions, responses, batch_size=args.batch_size))
                                    for name, j in judges.items()}, {name: args.repeats for name in judges})
    memory = {name: peak_rss_during(lambda j=j: j.score(instructions, responses, batch_size=args.batch_size))[1]
              for name, j in judges.items()}
    drift = [abs(a - b) for a, b in zip(scores["fp32"], scores["int8"])]
    by_items = {}
    for count in (len(instructions) // 4, len(instructions) // 2, len(instructions)):
        by_items[count] = min(_timed(lambda: judges["fp32"].score(instructions[:count], responses[:count],
                                                                  batch_size=args.batch_size))
                              for _ in range(args.repeats))
    del judges
    by_processes = {world: process_scaling(args, world) for world in (1, 2)}
    payload = {
        "command": command_line(), "machine": machine_info(), "judge": args.judge, "items": len(instructions),
        "tokens": tokens, "batch_size": args.batch_size, "matmul_peak_gflops": peak / 1e9,
        "fp32_s": times["fp32"], "int8_s": times["int8"], "int8_speedup": times["fp32"] / times["int8"],
        "fp32_gflops": flops / times["fp32"] / 1e9, "fp32_fraction_of_peak": flops / times["fp32"] / peak,
        "int8_effective_gflops": flops / times["int8"] / 1e9,
        "int8_mean_abs_score_diff": sum(drift) / len(drift), "int8_max_abs_score_diff": max(drift),
        "int8_spearman_vs_fp32": float(spearmanr(scores["fp32"], scores["int8"]).statistic),
        "peak_rss_mb": {k: v / 2**20 for k, v in memory.items()},
        "seconds_by_items": by_items, "seconds_by_processes": by_processes,
    }
    m = payload["machine"]
    p = payload
    markdown = "\n".join([
        "# CPU judge scoring: int8, FLOP/s against the matmul peak, memory, scaling", "",
        f"Command: `{p['command']}`  ",
        f"Machine: {m['cpu']} ({m['cpu_count']} cores, torch {m['torch']}, {m['torch_threads']} threads), {m['date']}  ",
        f"Judge {args.judge}; {len(instructions)} arena-bench answers cut to {args.answer_tokens} tokens, {tokens} tokens "
        f"in all; batch size {args.batch_size}; best of {args.repeats}, methods interleaved.", "",
        "| method | seconds | tokens/s | GFLOP/s | share of fp32 matmul peak | peak RSS MB |", "|---|---:|---:|---:|---:|---:|",
        f"| fp32 | {p['fp32_s']:.2f} | {tokens / p['fp32_s']:.0f} | {p['fp32_gflops']:.1f} | "
        f"{p['fp32_fraction_of_peak']:.1%} | {p['peak_rss_mb']['fp32']:.0f} |",
        f"| int8 dynamic | {p['int8_s']:.2f} | {tokens / p['int8_s']:.0f} | {p['int8_effective_gflops']:.1f} (fp32-equivalent) | "
        f"n/a | {p['peak_rss_mb']['int8']:.0f} |", "",
        f"Measured fp32 matmul peak (2048x2048 `torch.mm`, same process): {p['matmul_peak_gflops']:.1f} GFLOP/s. "
        f"int8 speedup {p['int8_speedup']:.2f}x; score drift against fp32: mean |diff| "
        f"{p['int8_mean_abs_score_diff']:.3f}, max {p['int8_max_abs_score_diff']:.3f} (0-9 scale), Spearman "
        f"{p['int8_spearman_vs_fp32']:.3f}. Peak RSS is the whole process (both judges loaded).", "",
        "| items | fp32 seconds | seconds per item |", "|---:|---:|---:|",
        *[f"| {k} | {v:.2f} | {v / k:.3f} |" for k, v in by_items.items()], "",
        "| processes (threads each) | seconds (slowest worker) | speedup over 1 |", "|---:|---:|---:|",
        *[f"| {k} ({max(1, (m['cpu_count'] or 1) // k)}) | {v:.2f} | {by_processes[1] / v:.2f}x |"
          for k, v in by_processes.items()], ""])
    write_results(args.name, payload, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
