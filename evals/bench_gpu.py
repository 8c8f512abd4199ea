"""Judge-scoring throughput on a GPU, on a randomly initialised model of the embedded model's architecture.

    python evals/bench_gpu.py                      # cuda, bf16 (what evals/gpu_check.sh runs)
    python evals/bench_gpu.py --device cpu --dtype float32 --batch_size 2 --seq_len 64 --steps 2   # smoke test

Throughput does not depend on weight values, so the check needs no weights to be downloaded or copied: the
model is SmolLM2-135M's architecture (30 layers, hidden 576, 9 heads / 3 KV heads, vocabulary 49152) with
random weights. The forward is SelfJudge's: left-padded batch, explicit position ids, logits for the last
position only, digit logits gathered. Reported: tokens/s, achieved TFLOP/s and its share of the bf16 matmul
peak measured in the same run (8192^3 ``torch.mm``), and peak memory.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--matmul_size", type=int, default=8192)
    return parser


def smollm2_135m_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                       rope_theta=100000.0, tie_word_embeddings=True, rms_norm_eps=1e-5)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None):
    args = make_parser().parse_args(argv)
    from transformers import LlamaForCausalLM

    from common import scoring_flops  # evals/ is this script's directory

    from selfj_rlhf.judge import left_pad

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    model = LlamaForCausalLM(smollm2_135m_config()).to(args.device, dtype).eval()
    digits = torch.arange(15, 25, device=args.device)  # ten token ids standing in for the digits
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(args.seq_len // 2, args.seq_len + 1, (args.batch_size,), generator=generator).tolist()
    batch = left_pad([torch.randint(100, 49000, (n,), generator=generator).tolist() for n in lengths], 0)
    batch = {k: v.to(args.device) for k, v in batch.items()}
    tokens = int(batch["attention_mask"].sum())

    def score_step():
        logits = model(**batch, logits_to_keep=1, use_cache=False).logits[:, -1, :].float()
        torch.softmax(logits[:, digits], dim=-1)

    with torch.inference_mode():
        for _ in range(3):
            score_step()
        synchronize(args.device)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(args.steps):
            score_step()
        synchronize(args.device)
        seconds = (time.perf_counter() - start) / args.steps
        a = torch.randn(args.matmul_size, args.matmul_size, device=args.device, dtype=dtype)
        torch.mm(a, a)
        synchronize(args.device)
        start = time.perf_counter()
        for _ in range(5):
            torch.mm(a, a)
        synchronize(args.device)
        peak = 2 * args.matmul_size**3 / ((time.perf_counter() - start) / 5)
    flops = scoring_flops(model, lengths)
    result = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
              "dtype": args.dtype, "batch_size": args.batch_size, "tokens_per_batch": tokens,
              "seconds_per_batch": seconds, "tokens_per_s": tokens / seconds, "achieved_tflops": flops / seconds / 1e12,
              "matmul_peak_tflops": peak / 1e12, "fraction_of_matmul_peak": flops / seconds / peak,
              "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
