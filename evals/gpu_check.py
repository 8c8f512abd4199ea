"""The GPU check: every row of the GPU table in docs/performance.md, on a bare CUDA machine with no network.

    python -m evals.gpu_check prepare                        # with the dev install: inputs into evals/gpu_inputs/
    python -m evals.gpu_check run RESULTS_DIR                # on the GPU machine (bash evals/gpu_check.sh does both)
    python -m evals.gpu_check run RESULTS_DIR --tiny --device cpu   # the same code on small models, anywhere

Timing does not depend on weight values, so the models are random-weight bf16 models of the real architectures
(SmolLM2-135M, the embedded model; Qwen2.5-7B) built directly on the GPU, with the real tokenizers (carried gzipped,
with 256 arena-bench answers: 16 questions x 15 models' answers + the reference). Rows, as JSON and markdown in
RESULTS_DIR: the bf16 matmul peak; scoring throughput and MFU by batch size and by token budget; prefix sharing
(auto, always) against never at three answer lengths, with the largest score differences in bf16 and fp32; how
often a best-of-16 pick changes with the batch an answer is scored in (bf16) and against fp32; SelfJudge against
generate-based scoring; and the judge server with 32 one-sample clients in another process, batching on and off,
against in-process scoring.
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

from evals.lib.batch_dependence import COMPOSITIONS, compare, scores_by_composition

REPO = Path(__file__).resolve().parents[1]
INPUTS = REPO / "evals" / "gpu_inputs"
ARCHITECTURES = {  # name -> (config kwargs, tokenizer folder under the inputs)
    "135M": (dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
                  tie_word_embeddings=True, rms_norm_eps=1e-5), "tokenizer-smollm2"),
    "7.6B": (dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, rope_theta=1000000.0,
                  tie_word_embeddings=False, rms_norm_eps=1e-6), "tokenizer-qwen2"),
}
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prepare = sub.add_parser("prepare", help="Tokenizers and arena answers into evals/gpu_inputs (gzipped).")
    prepare.add_argument("--arena", default=None, help="Arena grades file (default: under SELFJ_DATA_DIR).")
    run = sub.add_parser("run", help="Measure; write RESULTS_DIR/gpu_check.{json,md}.")
    run.add_argument("results_dir")
    run.add_argument("--device", default="cuda")
    run.add_argument("--tiny", action="store_true", help="Small models and sizes: a smoke run of the same code.")
    run.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES))
    return parser


# ---------------------------------------------------------------------------------------------- prepare
def prepare(args) -> None:
    """Gzipped tokenizers (the embedded GGUF's, the Qwen2 vocabulary of the dev install) and 256 arena answers."""
    import io
    import tarfile

    from transformers import AutoTokenizer

    from evals.lib.common import default_data

    from selfj_rlhf.data.datasets import iter_records
    from selfj_rlhf.core.models import embedded_gguf_path

    INPUTS.mkdir(parents=True, exist_ok=True)
    smol = embedded_gguf_path("smollm2-135m-instruct")
    qwen = REPO / ".venv" / "share" / "selfj-rlhf" / "ggml-vocab-qwen2.gguf"
    for name, gguf in (("tokenizer-smollm2", smol), ("tokenizer-qwen2", qwen)):
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        folder = INPUTS / name
        tokenizer.save_pretrained(folder)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(folder, arcname=name)
        (INPUTS / f"{name}.tar.gz").write_bytes(buffer.getvalue())
        for item in sorted(folder.iterdir(), reverse=True):
            item.unlink()
        folder.rmdir()
    by_question: dict[str, dict] = {}
    for _, row in iter_records(args.arena or default_data("arena_bench_v1")):
        entry = by_question.setdefault(row["question_id"], {"instruction": row["instruction"],
                                                            "reference": row["reference"], "answers": []})
        entry["answers"].append(row["response"])
    questions = [q for q in sorted(by_question) if len(by_question[q]["answers"]) >= 15][:16]
    items = [{"question": q, "instruction": by_question[q]["instruction"], "answers":
              by_question[q]["answers"][:15] + [by_question[q]["reference"]]} for q in questions]
    (INPUTS / "arena_items.json.gz").write_bytes(gzip.compress(json.dumps(items).encode()))
    size = sum(p.stat().st_size for p in INPUTS.iterdir())
    print(f"{INPUTS}: {size / 2**20:.1f} MiB")


# ---------------------------------------------------------------------------------------------- measuring
def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(device: str, dtype, size: int) -> float:
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype)
    seconds = timed(lambda: torch.mm(a, a), device, repeats=5)
    return 2 * size**3 / seconds


def load_inputs(tiny: bool):
    import tarfile

    from transformers import AutoTokenizer

    unpacked = Path(tempfile.mkdtemp(prefix="selfj-gpu-inputs-"))
    tokenizers = {}
    for name, (_, folder) in ARCHITECTURES.items():
        with tarfile.open(INPUTS / f"{folder}.tar.gz") as tar:
            tar.extractall(unpacked, filter="data")
        tokenizers[name] = AutoTokenizer.from_pretrained(unpacked / folder)
    items = json.loads(gzip.decompress((INPUTS / "arena_items.json.gz").read_bytes()))
    return tokenizers, items[:2] if tiny else items


def build_judge(name: str, tokenizer, device: str, dtype, tiny: bool, max_length: int):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from selfj_rlhf import SelfJudge

    kwargs, _ = ARCHITECTURES[name]
    kwargs = {**kwargs, **(TINY if tiny else {})}
    config = AutoConfig.for_model(**kwargs)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    return SelfJudge(model, tokenizer, max_length=max_length, base_model=f"random {name}")


def flat(items, answer_tokens: int | None, tokenizer):
    def cut(text):
        if answer_tokens is None:
            return text
        return tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)[:answer_tokens])

    return ([q["instruction"] for q in items for _ in q["answers"]], [cut(a) for q in items for a in q["answers"]])


def throughput_rows(judge, items, device: str, peak: float, tiny: bool) -> list[dict]:
    """Scoring tokens/s and MFU, by batch size and by token budget (share_prefix never)."""
    from evals.lib.common import scoring_flops

    instructions, responses = flat(items, None, judge.tokenizer)
    lengths = [len(judge.encode(i, r).input_ids) for i, r in zip(instructions, responses)]
    flops = scoring_flops(judge.model, lengths)
    judge.share_prefix = "never"
    rows = []
    for label, kwargs in (("batch 16", dict(batch_size=16)), ("batch 64", dict(batch_size=64)),
                          ("budget 16k tokens", dict(batch_size=256, max_batch_tokens=16384)),
                          ("budget 64k tokens", dict(batch_size=256, max_batch_tokens=65536))):
        seconds = timed(lambda: judge.score(instructions, responses, **kwargs), device, repeats=1 if tiny else 3)
        rows.append({"setting": label, "seconds": seconds, "tokens_per_s": sum(lengths) / seconds,
                     "mfu": flops / seconds / peak})
    return rows


def prefix_rows(judge, fp32_judge, items, device: str, tiny: bool) -> list[dict]:
    """auto and always against never, at three answer lengths; largest score differences in bf16 and fp32."""
    from selfj_rlhf.judge.self_judge import prefix_token_saving

    rows = []
    for answer_tokens in (None, 128, 32):
        instructions, responses = flat(items, answer_tokens, judge.tokenizer)
        scores, times = {}, {}
        for mode in ("never", "always", "auto"):
            judge.share_prefix = mode
            scores[mode] = judge.score(instructions, responses, batch_size=16)
            times[mode] = timed(lambda: judge.score(instructions, responses, batch_size=16), device,
                                repeats=1 if tiny else 3)
        encoded = [judge.encode(i, r) for i, r in zip(instructions, responses)]
        prefix = sum(e.prefix_length for e in encoded) / len(encoded)
        answer = sum(len(e.input_ids) - e.prefix_length for e in encoded) / len(encoded)
        row = {"answers": "full" if answer_tokens is None else f"cut to {answer_tokens} tokens",
               "prefix_tokens": prefix, "answer_tokens": answer,
               "token_saving": prefix_token_saving(len(items[0]["answers"]), round(prefix), answer),
               "auto_shares": judge.prefix_sharing_pays(len(items[0]["answers"]), round(prefix), answer),
               "never_s": times["never"], "always_over_never": times["never"] / times["always"],
               "auto_over_never": times["never"] / times["auto"],
               "max_diff_bf16": max(abs(a - b) for a, b in zip(scores["never"], scores["always"]))}
        if fp32_judge is not None:
            fp32_judge.share_prefix = "never"
            independent = fp32_judge.score(instructions, responses, batch_size=16)
            fp32_judge.share_prefix = "always"
            row["max_diff_fp32"] = max(abs(a - b) for a, b in zip(independent, fp32_judge.score(
                instructions, responses, batch_size=16)))
        rows.append(row)
    judge.share_prefix = "auto"
    return rows


def batch_dependence(judge, fp32_judge, items) -> dict:
    """How often the best-of-16 pick of a question changes with the batch its answers are scored in (bf16: alone,
    with the question's other answers, shuffled among other questions' answers; batches of 16), against fp32 (or,
    without an fp32 judge, against the question's own batch)."""
    instructions, responses = flat(items, None, judge.tokenizer)
    groups = [str(q) for q, item in enumerate(items) for _ in item["answers"]]
    runs = scores_by_composition(judge, instructions, responses, groups, 16)
    reference = (scores_by_composition(fp32_judge, instructions, responses, groups, 16)[COMPOSITIONS[1]]
                 if fp32_judge is not None else runs[COMPOSITIONS[1]])
    return {"reference": "fp32" if fp32_judge is not None else COMPOSITIONS[1], **compare(groups, reference, runs)}


def generate_row(judge, items, device: str, tiny: bool) -> dict:
    """SelfJudge against scoring by generating the rating (10 new tokens, 2 beams), on the first 16 answers."""
    from selfj_rlhf.core.tensors import left_pad

    instructions, responses = flat(items[:1], None, judge.tokenizer)
    batch = left_pad([judge.encode(i, r).input_ids for i, r in zip(instructions, responses)],
                     judge.tokenizer.pad_token_id or 0)
    batch = {k: v.to(device) for k, v in batch.items()}

    def generate():
        judge.model.generate(**batch, max_new_tokens=10, num_beams=2, do_sample=False,
                             pad_token_id=judge.tokenizer.pad_token_id or 0)

    judge.share_prefix = "never"
    selfjudge = timed(lambda: judge.score(instructions, responses, batch_size=16), device, repeats=1 if tiny else 3)
    generated = timed(generate, device, repeats=1 if tiny else 3)
    return {"selfjudge_s": selfjudge, "generate_s": generated, "selfjudge_speedup": generated / selfjudge}


def server_rows(judge, items, tiny: bool) -> dict:
    """The judge server with 32 one-sample clients in another process, batching on and off, against in-process."""
    from selfj_rlhf import SelfJRewardConfig
    from selfj_rlhf.serving.server import ServeConfig, create_app
    from selfj_rlhf.testing import ServerThread, one_sample_clients

    instructions, responses = flat(items, 128, judge.tokenizer)
    pairs = list(zip(instructions, responses))
    started = time.perf_counter()
    judge.score(instructions, responses, batch_size=32)
    in_process = len(pairs) / (time.perf_counter() - started)
    rows = {"in_process_items_per_s": in_process}
    for batching in (True, False):
        config = ServeConfig(max_batch_size=32 if batching else 1, max_wait_ms=5)
        with ServerThread(create_app(judge, SelfJRewardConfig(judge="random", judge_batch_size=32), config)) as url:
            import httpx

            served = one_sample_clients(url, pairs, concurrency=8 if tiny else 32)
            metrics = httpx.get(url + "/metrics", params={"format": "json"}).json()
        rows["batching on" if batching else "batching off"] = {
            **served, "of_in_process": served["items_per_s"] / in_process,
            "mean_batch": metrics["selfj_batch_size_sum"] / metrics["selfj_batch_size_count"]}
    return rows


def run(args) -> None:
    import torch

    from evals.lib.common import machine_info

    started = time.perf_counter()
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizers, items = load_inputs(args.tiny)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    peak = matmul_peak(args.device, dtype, 512 if args.tiny else 8192)
    result = {"machine": machine_info(), "device": args.device, "dtype": str(dtype), "matmul_peak_tflops": peak / 1e12,
              "questions": len(items), "answers_per_question": len(items[0]["answers"]), "architectures": {}}
    for name in args.architectures:
        judge = build_judge(name, tokenizers[name], args.device, dtype, args.tiny, max_length=1024)
        fp32 = build_judge(name, tokenizers[name], args.device, torch.float32, args.tiny, max_length=1024)
        row = {"parameters": sum(p.numel() for p in judge.model.parameters()),
               "throughput": throughput_rows(judge, items, args.device, peak, args.tiny),
               "prefix": prefix_rows(judge, fp32, items, args.device, args.tiny),
               "batch_dependence": batch_dependence(judge, fp32, items),
               "generate": generate_row(judge, items, args.device, args.tiny)}
        del fp32
        row["server"] = server_rows(judge, items, args.tiny)
        result["architectures"][name] = row
        print(json.dumps({name: row}), flush=True)
        del judge
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    result["wall_s"] = time.perf_counter() - started
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gpu_check.md").write_text(render(result))
    print(render(result))


def render(r: dict) -> str:
    m = r["machine"]
    lines = ["# GPU check: judge scoring and serving", "", "Command: `bash evals/gpu_check.sh`  ",
             f"Machine: {m.get('cuda') or m.get('cpu')}, {m['date']}; {r['dtype']}; matmul peak "
             f"{r['matmul_peak_tflops']:.0f} TFLOP/s measured in the same run  ",
             f"Items: {r['questions']} arena questions x {r['answers_per_question']} answers; random-weight models of "
             "the real architectures, real tokenizers.", ""]
    for name, row in r["architectures"].items():
        lines += [f"## {name} ({row['parameters'] / 1e6:.0f}M parameters)", "", "| scoring | tokens/s | MFU |",
                  "|---|---:|---:|"]
        lines += [f"| {t['setting']} | {t['tokens_per_s']:,.0f} | {t['mfu']:.1%} |" for t in row["throughput"]]
        lines += ["", "| answers | token saving | auto shares | auto / never | always / never | max diff bf16 | "
                  "max diff fp32 |", "|---|---:|---|---:|---:|---:|---:|"]
        lines += [f"| {p['answers']} | {p['token_saving']:.2f}x | {'yes' if p['auto_shares'] else 'no'} | "
                  f"{p['auto_over_never']:.2f}x | {p['always_over_never']:.2f}x | {p['max_diff_bf16']:.3g} | "
                  f"{p.get('max_diff_fp32', float('nan')):.3g} |" for p in row["prefix"]]
        b = row["batch_dependence"]
        lines += ["", f"Batch dependence ({b['prompts']} questions, against {b['reference']}): largest score change "
                      f"{b['max_abs_vs_reference']:.3g}, between compositions {b['max_abs_between_runs']:.3g}; best-of-16 "
                      "picks changed: " + ", ".join(f"{k} {v:.0%}" for k, v in b["pick_changed_vs_reference"].items())
                  + f"; between compositions {b['pick_changed_between_runs']:.0%}."]
        g, s = row["generate"], row["server"]
        lines += ["", f"SelfJudge vs generate-based scoring: {g['selfjudge_speedup']:.1f}x faster.  ",
                  f"Server, one-sample clients in another process: batching on {s['batching on']['items_per_s']:.1f} "
                  f"items/s ({s['batching on']['of_in_process']:.0%} of in-process, mean batch "
                  f"{s['batching on']['mean_batch']:.1f}); off {s['batching off']['items_per_s']:.1f} items/s.", ""]
    return "\n".join(lines)


def main(argv=None):
    args = make_parser().parse_args(argv)
    {"prepare": prepare, "run": run}[args.command](args)


if __name__ == "__main__":
    main()
