"""Judge server under abuse: oversized, deeply nested and whitespace-bomb bodies, a burst of ten times the queue,
and a judge whose batches fail one in twenty, while a probe times /health.

    python -m evals.server_abuse

The server is `selfj serve`'s app in a subprocess (so its peak memory is its own), serving a tiny random Llama with
the SmolLM2 tokenizer behind a wrapper that raises on every ``--fail_every``-th judge call: this measures the
serving machinery, not a judge. Clients retry as the library's client does (503 after the Retry-After, with jitter)
and, as an engine re-requests a sample whose reward failed, re-send after a 500 until a reward comes back. Every
reward is checked against the same judge's in-process score of its own item: a reward that never came back is
lost, one that matches another item, or comes twice, is duplicated. Results: evals/results/server_abuse.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fail_every(n: int):
    """A ``JudgeBehind`` action that raises on every ``n``-th call (with text a client must never see)."""
    calls = 0

    def count():
        nonlocal calls
        calls += 1
        if n and calls % n == 0:
            raise RuntimeError(f"injected failure of call {calls} (internal detail)")
    return count


def serve_flaky(args) -> None:
    """The subprocess: the server app over the flaky tiny judge."""
    import uvicorn

    from selfj_rlhf import SelfJRewardConfig, SelfJudge
    from selfj_rlhf.serving.server import ServeConfig, create_app
    from selfj_rlhf.testing import JudgeBehind

    judge = JudgeBehind(SelfJudge.from_pretrained(args.model, device="cpu"), fail_every(args.fail_every))
    config = ServeConfig(max_queue=args.max_queue, max_batch_size=32, max_body_bytes=args.max_body_bytes)
    uvicorn.run(create_app(judge, SelfJRewardConfig(judge=args.model), config), host="127.0.0.1", port=args.port,
                log_level="critical")


def memory_kib(pid: int) -> dict[str, int]:
    """Resident set now and at its peak (Linux /proc)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


async def probe_health(url: str, stop: asyncio.Event, phase: list[str], probes: list[tuple[str, float | str]]) -> None:
    """GET /health every 20 ms: ``(phase, seconds)``, or ``(phase, error name)`` for a probe that failed."""
    import httpx

    async with httpx.AsyncClient(timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                response = await client.get(url + "/health")
                probes.append((phase[0], time.perf_counter() - started if response.status_code == 200
                               else f"status {response.status_code}"))
            except httpx.TransportError as err:
                probes.append((phase[0], type(err).__name__))
            await asyncio.sleep(0.02)


async def send_raw(url: str, content, headers: dict | None = None) -> str:
    """The status of one request, or the transport error's name (a server may close the connection on a body it
    refuses before the client has finished sending it)."""
    import httpx

    async with httpx.AsyncClient(timeout=120) as client:
        try:
            return str((await client.post(url + "/get_reward", content=content, headers=headers)).status_code)
        except httpx.TransportError as err:
            return type(err).__name__


async def bodies(url: str, phase: list[str]) -> dict[str, str]:
    """Each hostile body and what the server answered (``phase[0]`` names the one being sent)."""
    megabyte = json.dumps({"prompts": ["Summarise this."], "responses": ["word " * 209_715]}).encode()

    async def streamed(total: int):
        for _ in range(total // 2**20):
            yield b"x" * 2**20

    spaces = " " * 100_000
    whitespace = json.dumps({"prompts": [spaces + "Question?"], "responses": [spaces + "Answer." + spaces]}).encode()
    query = json.dumps({"prompts": ["<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n" + spaces],
                        "query": ["<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n" + spaces + "A" + spaces
                                  + "<|im_end|>" * 1000]}).encode()
    sends = {
        "1 MB body": lambda: send_raw(url, megabyte, {"content-type": "application/json"}),
        "50 MB body": lambda: send_raw(url, b"x" * (50 * 2**20)),
        "50 MB body, streamed without Content-Length": lambda: send_raw(url, streamed(50 * 2**20)),
        "JSON nested 1,000,000 deep": lambda: send_raw(url, b"[" * 1_000_000 + b"]" * 1_000_000),
        "100,000 spaces around an answer": lambda: send_raw(url, whitespace),
        "query with 100,000 spaces and 1,000 end markers": lambda: send_raw(url, query),
        "[INST] x 100,000 as the prompt": lambda: send_raw(
            url, json.dumps({"prompts": ["[INST]" * 100_000], "responses": ["x"]}).encode()),
    }
    answers = {}
    for name, send in sends.items():
        phase[0] = name
        answers[name] = await send()
        await asyncio.sleep(0.3)  # let the probe see the server after each one
    return answers


async def burst(url: str, items: list[tuple[str, str]], rng: random.Random) -> dict:
    """Every item as its own request, all at once; retry 503 (after Retry-After, jittered) and 500 (re-request)."""
    import httpx

    statuses: dict[str, int] = {}
    rewards: dict[int, list[float]] = {}

    async def one(client, index: int, instruction: str, response: str):
        for _ in range(200):
            answer = await client.post(url + "/get_reward", json={"prompts": [instruction], "responses": [response]})
            statuses[str(answer.status_code)] = statuses.get(str(answer.status_code), 0) + 1
            if answer.status_code == 200:
                rewards.setdefault(index, []).extend(answer.json()["extra_logs"]["expected_digit"])
                return
            if answer.status_code == 500:
                assert "internal detail" not in answer.text and "error_id" in answer.json()
            pause = float(answer.headers.get("retry-after", 0.05))
            await asyncio.sleep(rng.uniform(pause / 2, pause))

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=None)) as client:
        await asyncio.gather(*(one(client, i, q, r) for i, (q, r) in enumerate(items)))
    return {"statuses": statuses, "rewards": rewards, "wall_s": time.perf_counter() - started}


def latency_summary(values: list[float | str]) -> dict:
    times = sorted(v for v in values if not isinstance(v, str))
    return {"probes": len(values), "failed": len(values) - len(times),
            "failures": sorted({v for v in values if isinstance(v, str)}),
            "p50_ms": 1000 * statistics.median(times) if times else None,
            "p99_ms": 1000 * times[int(0.99 * (len(times) - 1))] if times else None,
            "max_ms": 1000 * times[-1] if times else None}


async def run(url: str, items, expected, rng) -> dict:
    stop, phase, probes = asyncio.Event(), ["idle"], []
    prober = asyncio.create_task(probe_health(url, stop, phase, probes))
    await asyncio.sleep(0.5)
    body_answers = await bodies(url, phase)
    phase[0] = "burst"
    burst_result = await burst(url, items, rng)
    stop.set()
    await prober
    rewards = burst_result.pop("rewards")
    lost = [i for i in range(len(items)) if i not in rewards]
    duplicated = [i for i, values in rewards.items() if len(values) != 1 or abs(values[0] - expected[i]) > 1e-4]
    by_phase: dict[str, list] = {}
    for name, value in probes:
        by_phase.setdefault(name, []).append(value)
    return {"bodies": body_answers, "burst": {**burst_result, "requests": len(items), "lost": len(lost),
                                               "duplicated_or_wrong": len(duplicated)},
            "health": latency_summary([v for _, v in probes]),
            "health_by_phase": {name: latency_summary(values) for name, values in by_phase.items()}}


def render(p: dict) -> str:
    m, r = p["machine"], p["result"]
    lines = ["# Judge server under abuse", "", f"Command: `{p['command']}`  ",
             f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['date']}", "",
             f"`selfj serve`'s app in its own process over a tiny random Llama (SmolLM2 tokenizer) whose every "
             f"{p['fail_every']}th judge call raises; max_queue {p['max_queue']}, max_body_bytes {p['max_body_bytes']:,}, "
             "max_batch_size 32. A probe times GET /health every 20 ms throughout.", "",
             "| hostile body | answer | /health meanwhile: p99 ms | max ms | failed probes |", "|---|---|---:|---:|---:|"]
    for name, answer in r["bodies"].items():
        h = r["health_by_phase"].get(name)
        lines.append(f"| {name} | {answer} | " + (f"{h['p99_ms']:.0f} | {h['max_ms']:.0f} | {h['failed']} |" if h and
                                                  h["p99_ms"] is not None else "- | - | - |"))
    b, h, mem = r["burst"], r["health"], p["memory_kib"]
    lines += ["", f"Burst: {b['requests']} one-sample requests at once (ten times the queue), each retried after 503 "
                  "(its Retry-After, jittered) and re-sent after 500 until it got a reward: "
                  f"{b['wall_s']:.1f} s, answers {b['statuses']}; rewards lost: {b['lost']}, duplicated or wrong: "
                  f"{b['duplicated_or_wrong']} (each checked against the judge's in-process score of its item).", "",
              f"/health during all of it: {h['probes']} probes, {h['failed']} failed {h['failures']}, p50 "
              f"{h['p50_ms']:.1f} ms, p99 {h['p99_ms']:.1f} ms, max {h['max_ms']:.1f} ms (during the burst: p99 "
              f"{r['health_by_phase']['burst']['p99_ms']:.1f} ms).", "",
              f"Server memory: {mem['start']['VmRSS'] / 1024:.0f} MiB resident after start-up, peak "
              f"{mem['end']['VmHWM'] / 1024:.0f} MiB.", ""]
    return "\n".join(lines)


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default="runs/server_abuse")
    parser.add_argument("--fail_every", type=int, default=20, help="Every n-th judge call raises.")
    parser.add_argument("--max_queue", type=int, default=64)
    parser.add_argument("--max_body_bytes", type=int, default=16 * 2**20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the server subprocess
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    import httpx

    from evals.lib.common import command_line, machine_info, write_results
    from selfj_rlhf import SelfJudge
    from selfj_rlhf.testing import build_tiny_llama, free_port

    args = make_parser().parse_args(argv)
    if args.serve:
        return serve_flaky(args)
    model = build_tiny_llama(Path(args.work_dir) / "tiny_model")
    rng = random.Random(args.seed)
    words = "the a judge answer reward model token batch queue server client prompt score".split()
    items = [(f"Question {i % 40}: explain {' '.join(rng.choices(words, k=5))}.",
              f"Answer {i}: " + " ".join(rng.choices(words, k=rng.randint(2, 30)))) for i in range(10 * args.max_queue)]
    expected = SelfJudge.from_pretrained(str(model), device="cpu").score([q for q, _ in items], [r for _, r in items])
    port = free_port()
    log = open(Path(args.work_dir) / "server.log", "wb")  # the injected failures' tracebacks, with their ids
    server = subprocess.Popen([sys.executable, "-m", "evals.server_abuse", "--serve", "--model", str(model),
                               "--port", str(port), "--fail_every", str(args.fail_every), "--max_queue",
                               str(args.max_queue), "--max_body_bytes", str(args.max_body_bytes)], cwd=REPO,
                              stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start")
                time.sleep(0.2)
        start_memory = memory_kib(server.pid)
        result = asyncio.run(run(url, items, expected, rng))
        end_memory = memory_kib(server.pid)
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    payload = {"command": command_line(), "machine": machine_info(), "fail_every": args.fail_every,
               "max_queue": args.max_queue, "max_body_bytes": args.max_body_bytes, "result": result,
               "server_alive_at_end": alive, "memory_kib": {"start": start_memory, "end": end_memory}}
    write_results("server_abuse", payload, render(payload))
    print(render(payload))


if __name__ == "__main__":
    main()
