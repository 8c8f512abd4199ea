"""Judge server benchmark: throughput and latency of `selfj serve` with and without dynamic batching, against
in-process scoring; and a load test with faults (malformed bodies, clients that disconnect mid-request, a server
restart in the middle) that counts lost, duplicated and misordered rewards and server crashes.

    python -m evals.bench_server throughput --alpaca_eval $SELFJ_DATA_DIR/alpaca_eval/gpt4_1106_preview_outputs.json
    python -m evals.bench_server load --requests 10000 --concurrency 64

Throughput uses the shipped judge of the embedded model; items are AlpacaEval instructions with 4 answers each
(two models' outputs, each cut at two lengths), sent as one-sample requests in prompt order, as an RL engine sends
a group of samples. The load test uses a tiny random Llama with the real tokenizer, served by the `selfj serve`
command in a subprocess (so it can be restarted), because it tests the serving machinery, not the judge.
Results: evals/results/bench_server.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MALFORMED = [b"{not json", b'{"query": "not a list", "prompts": ["a"]}', b'{"query": ["a", "b"], "prompts": ["a"]}',
             b'{"responses": ["x"]}', b'[1, 2, 3]', b'{"prompts": ["a"], "responses": [7]}']


# ----------------------------------------------------------------------------- load test
def load_items(count: int, seed: int) -> list[tuple[str, str]]:
    """Unique (instruction, response) pairs: 25 instructions (so responses share prompts), distinct responses."""
    rng = random.Random(seed)
    words = "the a judge answer reward model token batch queue server client prompt score value quick brown".split()
    instructions = [f"Question {q}: explain {' '.join(rng.choices(words, k=6))}." for q in range(25)]
    return [(instructions[i % 25], f"Answer {i}: " + " ".join(rng.choices(words, k=rng.randint(3, 40))))
            for i in range(count)]


async def _post_with_retry(client, url: str, body: dict, deadline_s: float = 120.0):
    """POST until a non-retryable answer: 503/504 and refused connections (a restarting server) are retried."""
    import httpx

    start = time.monotonic()
    while True:
        try:
            response = await client.post(url, json=body)
            if response.status_code not in (502, 503, 504):
                return response
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            pass
        if time.monotonic() - start > deadline_s:
            return None
        await asyncio.sleep(0.2)


async def _disconnect_mid_request(host: str, port: int, index: int) -> None:
    """A client that goes away: half a body (odd index) or a whole request left unread (even index)."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return
    body = json.dumps({"prompts": ["Gone?"], "responses": [f"client {index} leaves"]}).encode()
    head = (f"POST /get_reward HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    writer.write(head + (body[: len(body) // 2] if index % 2 else body))
    await writer.drain()
    writer.close()


async def _load(url: str, items, expected, requests: int, concurrency: int, malformed_every: int,
                disconnect_every: int, midway=None) -> dict:
    import httpx

    host, port = url.split("//")[1].split(":")
    answers: dict[int, list] = {}
    bodies: dict[int, list[int]] = {}
    counts = {"malformed_sent": 0, "malformed_rejected": 0, "disconnects": 0, "server_errors": 0, "gave_up": 0}
    latencies = []
    next_request = itertools.count()
    done = 0
    midway_task = None

    async def worker(client):
        nonlocal done, midway_task
        while (r := next(next_request)) < requests:
            if malformed_every and r % malformed_every == malformed_every - 1:
                counts["malformed_sent"] += 1
                response = await _post_raw(client, url, MALFORMED[r % len(MALFORMED)])
                counts["malformed_rejected"] += response is not None and response.status_code == 400
            elif disconnect_every and r % disconnect_every == disconnect_every - 2:
                counts["disconnects"] += 1
                await _disconnect_mid_request(host, int(port), r)
            else:
                members = [r % len(items)] if r % 7 else [r % len(items), (r + 1) % len(items), (r + 2) % len(items)]
                bodies[r] = members
                started = time.perf_counter()
                response = await _post_with_retry(client, url + "/get_reward",
                                                  {"prompts": [items[m][0] for m in members],
                                                   "responses": [items[m][1] for m in members]})
                if response is None:
                    counts["gave_up"] += 1
                elif response.status_code != 200:
                    counts["server_errors"] += 1
                else:
                    latencies.append(time.perf_counter() - started)
                    answers[r] = response.json()["extra_logs"]["expected_digit"]
            done += 1
            if midway is not None and midway_task is None and done >= requests // 2:
                midway_task = asyncio.create_task(asyncio.to_thread(midway))

    async def _post_raw(client, target, content):
        try:
            return await client.post(target + "/get_reward", content=content,
                                      headers={"Content-Type": "application/json"})
        except httpx.TransportError:
            return None

    start = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    if midway_task is not None:
        await midway_task
    wall = time.perf_counter() - start
    lost = duplicated = misordered = 0
    for r, members in bodies.items():
        got = answers.get(r)
        if got is None:
            lost += len(members)
            continue
        duplicated += max(0, len(got) - len(members))
        lost += max(0, len(members) - len(got))
        misordered += sum(abs(g - expected[m]) > 1e-4 for g, m in zip(got, members))
    return {"requests": requests, "concurrency": concurrency, "valid_requests": len(bodies),
            "rewards_expected": sum(len(m) for m in bodies.values()), "lost": lost, "duplicated": duplicated,
            "misordered": misordered, **counts, "wall_s": round(wall, 2), "requests_per_s": round(requests / wall, 1),
            "p50_ms": round(1000 * _quantile(latencies, 0.5), 1), "p99_ms": round(1000 * _quantile(latencies, 0.99), 1)}


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load_test(url: str, judge, requests: int = 1000, concurrency: int = 32, malformed_every: int = 10,
              disconnect_every: int = 0, seed: int = 0, midway=None) -> dict:
    """Send ``requests`` requests (every 7th valid one with 3 items) and check every reward against ``judge``'s
    in-process score of its own item. ``midway`` runs (in a thread) once half the requests are done."""
    items = load_items(max(64, requests // 4), seed)
    expected = judge.score([i for i, _ in items], [r for _, r in items], batch_size=32)
    return asyncio.run(_load(url, items, expected, requests, concurrency, malformed_every, disconnect_every, midway))


def run_load(args) -> dict:
    from selfj_rlhf import SelfJudge
    from selfj_rlhf.testing import JudgeServerProcess, build_tiny_llama

    model = build_tiny_llama(Path(args.work_dir) / "tiny_model")
    judge = SelfJudge.from_pretrained(str(model), device="cpu")
    server = JudgeServerProcess(str(model))
    clean_exits = []  # one per stop: False when the server had died on its own or did not exit cleanly

    def restart():
        clean_exits.append(server.stop())
        server.start()

    server.start()
    try:
        result = load_test(server.url, judge, args.requests, args.load_concurrency, malformed_every=args.malformed_every,
                           disconnect_every=args.disconnect_every, seed=args.seed, midway=restart)
    finally:
        clean_exits.append(server.stop())
    result["server_restarts"] = 1
    result["server_crashes"] = clean_exits.count(False)
    return result


# ----------------------------------------------------------------------------- throughput
def alpaca_items(path: str, prompts: int, tokenizer) -> list[tuple[str, str]]:
    """``prompts`` AlpacaEval instructions x 4 answers: the GPT-4 and text-davinci-003 outputs, each cut at 48
    and at 96 tokens."""
    rows = json.loads(Path(path).read_text())[:prompts]
    davinci = {r["instruction"]: r["output"] for r in json.loads(
        (Path(path).parent / "text_davinci_003_outputs.json").read_text())}
    items = []
    for row in rows:
        for answer in (row["output"], davinci.get(row["instruction"], row["output"])):
            ids = tokenizer.encode(answer, add_special_tokens=False)
            items += [(row["instruction"], tokenizer.decode(ids[:cut])) for cut in (48, 96)]
    return items


async def _throughput(url: str, items, concurrency: int) -> dict:
    import httpx

    queue = iter(range(len(items)))
    latencies = []

    async def worker(client):
        for index in queue:
            started = time.perf_counter()
            response = await client.post(url + "/get_reward", json={"prompts": [items[index][0]],
                                                                    "responses": [items[index][1]]})
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    start = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {"items": len(items), "wall_s": round(wall, 2), "items_per_s": round(len(items) / wall, 3),
            "requests_per_s": round(len(items) / wall, 3), "p50_ms": round(1000 * _quantile(latencies, 0.5)),
            "p99_ms": round(1000 * _quantile(latencies, 0.99))}


def served_rows(judge, reward, in_process: float, args, send) -> list[dict]:
    """For each client count, batching on and off: ``send(url, concurrency)``'s result against a server of ``judge``,
    with the mean batch size and the share of the in-process throughput."""
    import httpx

    from selfj_rlhf.serving.server import ServeConfig, create_app
    from selfj_rlhf.testing import ServerThread

    rows = []
    for concurrency in args.concurrency:
        for batching in (True, False):
            config = ServeConfig(max_batch_size=args.max_batch_size if batching else 1, max_wait_ms=args.max_wait_ms)
            with ServerThread(create_app(judge, reward, config)) as url:
                result = send(url, concurrency)
                metrics = httpx.get(url + "/metrics", params={"format": "json"}).json()
            result.update(concurrency=concurrency, batching=batching,
                          mean_batch_size=round(metrics["selfj_batch_size_sum"] / metrics["selfj_batch_size_count"], 2),
                          of_in_process=round(result["items_per_s"] / in_process, 3))
            print(json.dumps(result), flush=True)
            rows.append(result)
    return rows


def run_throughput(args) -> dict:
    from selfj_rlhf import SelfJRewardConfig, SelfJudge
    from selfj_rlhf.core.models import DEFAULT_POLICY
    from selfj_rlhf.judge.directory import default_judge_for

    judge_spec = args.judge or default_judge_for(DEFAULT_POLICY)
    judge = SelfJudge.from_pretrained(judge_spec, device="cpu", max_length=args.max_length)
    items = alpaca_items(args.alpaca_eval, args.prompts, judge.tokenizer)
    tokens = [len(judge.encode(i, r).input_ids) for i, r in items]
    judge.score(*zip(*items[:4]))  # warm-up
    started = time.perf_counter()
    judge.score_details([i for i, _ in items], [r for _, r in items], batch_size=args.max_batch_size)
    in_process = len(items) / (time.perf_counter() - started)
    rows = served_rows(judge, SelfJRewardConfig(judge=judge_spec), in_process, args,
                       lambda url, concurrency: asyncio.run(_throughput(url, items, concurrency)))
    return {"judge": judge_spec, "items": len(items), "prompts": args.prompts, "mean_judge_tokens":
            round(statistics.fmean(tokens), 1), "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
            "in_process_items_per_s": round(in_process, 3), "rows": rows}


def run_simulated(args) -> dict:
    """The server against ``SimulatedDeviceJudge`` (a GPU-like cost: a batch of 32 costs little more than one, part of
    it holding the GIL), with one-sample clients in another process: coalescing measured without a GPU."""
    import math

    from selfj_rlhf import SelfJRewardConfig
    from selfj_rlhf.core.models import load_tokenizer
    from selfj_rlhf.testing import SimulatedDeviceJudge, one_sample_clients

    judge = SimulatedDeviceJudge(load_tokenizer("smollm2-135m-instruct"), latency_s=args.simulated_latency_s,
                                 per_item_s=args.simulated_per_item_s)
    items = load_items(args.simulated_items, args.seed)
    in_process = len(items) / (math.ceil(len(items) / args.max_batch_size) * judge.forward_seconds(args.max_batch_size))
    rows = served_rows(judge, SelfJRewardConfig(judge="simulated", judge_batch_size=args.max_batch_size), in_process, args,
                       lambda url, concurrency: one_sample_clients(url, items, concurrency))
    return {"latency_s": args.simulated_latency_s, "per_item_s": args.simulated_per_item_s, "gil_share": judge.gil_share,
            "items": len(items), "in_process_items_per_s": round(in_process, 3), "rows": rows}


# ----------------------------------------------------------------------------- report
def render_simulated(simulated: dict) -> list[str]:
    lines = ["", "## Against a simulated GPU judge", "",
             f"`SimulatedDeviceJudge`: a forward costs {simulated['latency_s']} s + {simulated['per_item_s']} s per item, "
             f"{simulated['gil_share']:.0%} of it holding the GIL; {simulated['items']} one-sample requests from clients in "
             f"another process. In-process: {simulated['in_process_items_per_s']} items/s (batches of the server's "
             "max batch size).", "", "| clients | batching | items/s | of in-process | mean batch |",
             "|---:|---|---:|---:|---:|"]
    for r in simulated["rows"]:
        lines.append(f"| {r['concurrency']} | {'on' if r['batching'] else 'off'} | {r['items_per_s']:.1f} | "
                     f"{r['of_in_process']:.0%} | {r['mean_batch_size']} |")
    return lines


def render(throughput: dict | None, load: dict | None, command: str, machine: dict,
           simulated: dict | None = None) -> str:
    lines = ["# Judge server benchmark (`selfj serve`)", "", f"Command: `{command}`", "",
             f"Machine: {machine['cpu']}, {machine['cpu_count']} cores, torch {machine['torch']} "
             f"({machine['torch_threads']} threads); {machine['date']}.", ""]
    if throughput:
        rows = throughput["rows"]
        lines += ["## Throughput and latency", "",
                  f"Judge `{throughput['judge']}`; {throughput['items']} one-sample requests "
                  f"({throughput['prompts']} AlpacaEval prompts x 4 answers, {throughput['mean_judge_tokens']} judge "
                  f"tokens on average), client and server in one process. In-process `SelfJudge.score_details` on the "
                  f"same items (batch {throughput['max_batch_size']}, prefix sharing): "
                  f"**{throughput['in_process_items_per_s']} items/s**.", "",
                  "Each client sends its next request when the last one is answered; where there are more clients "
                  "than requests, every request is in flight at once.", "",
                  "| concurrent clients | batching | items/s | of in-process | mean batch | p50 ms | p99 ms |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['concurrency']} | {'on' if r['batching'] else 'off'} | {r['items_per_s']} | "
                         f"{r['of_in_process']:.0%} | {r['mean_batch_size']} | {r['p50_ms']} | {r['p99_ms']} |")
        by = {(r["concurrency"], r["batching"]): r for r in rows}
        if (32, True) in by and (32, False) in by:
            speedup = by[32, True]["items_per_s"] / by[32, False]["items_per_s"]
            lines += ["", f"At 32 clients batching gives **{speedup:.2f}x** the throughput without batching "
                          f"and **{by[32, True]['of_in_process']:.0%}** of in-process scoring."]
        if (1, False) in by:
            ceiling = throughput["in_process_items_per_s"] / by[1, False]["items_per_s"]
            lines += ["", f"The ceiling of any batching here: in-process batched scoring is **{ceiling:.2f}x** the "
                          "unbatched server (one client). On a CPU the forward of one item already keeps every core "
                          "busy, so batching can only remove per-call overhead and repeated prompt prefixes; larger "
                          "gains need a device that a batch-1 forward leaves mostly idle (a GPU)."]
    if load:
        lines += ["", "## Load test with faults", "",
                  f"{load['requests']} requests from {load['concurrency']} concurrent clients against `selfj serve` "
                  f"(tiny random Llama, real tokenizer) in a subprocess: {load['malformed_sent']} malformed bodies, "
                  f"{load['disconnects']} clients that disconnect mid-request, {load['server_restarts']} restart "
                  "(SIGTERM, then a new server) half way; clients retry refused connections and 503/504.", "",
                  "| rewards expected | lost | duplicated | misordered | malformed rejected (400) | other errors | "
                  "server crashes | requests/s | p50 ms | p99 ms |", "|---|---|---|---|---|---|---|---|---|---|",
                  f"| {load['rewards_expected']} | {load['lost']} | {load['duplicated']} | {load['misordered']} | "
                  f"{load['malformed_rejected']} of {load['malformed_sent']} | {load['server_errors'] + load['gave_up']} "
                  f"| {load['server_crashes']} | {load['requests_per_s']} | {load['p50_ms']} | {load['p99_ms']} |", "",
                  "Malformed bodies are not retried, so those sent while the server was restarting met a refused "
                  "connection instead of a 400; valid requests are retried and none was lost."]
    if simulated:
        lines += render_simulated(simulated)
    return "\n".join(lines) + "\n"


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="+", choices=["throughput", "load", "simulated", "render"],
                        help="What to run; `render` only rewrites the markdown from the saved JSON.")
    from evals.lib.common import default_data

    parser.add_argument("--alpaca_eval", default=default_data("alpaca_eval"),
                        help="AlpacaEval outputs file or dataset spec (default: under SELFJ_DATA_DIR, else preset:alpaca_eval).")
    parser.add_argument("--judge", default=None, help="Judge (default: the shipped judge of the embedded model).")
    parser.add_argument("--prompts", type=int, default=16, help="AlpacaEval prompts (x 4 answers each).")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--max_batch_size", type=int, default=32)
    parser.add_argument("--max_wait_ms", type=float, default=5.0)
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--simulated_items", type=int, default=256, help="Requests of the simulated-judge part.")
    parser.add_argument("--simulated_latency_s", type=float, default=0.4, help="Simulated forward: fixed seconds.")
    parser.add_argument("--simulated_per_item_s", type=float, default=0.004, help="Simulated forward: per item.")
    parser.add_argument("--load_concurrency", type=int, default=64, help="Concurrent clients of the load test.")
    parser.add_argument("--malformed_every", type=int, default=20)
    parser.add_argument("--disconnect_every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work_dir", default="runs/bench_server")
    parser.add_argument("--name", default="bench_server")
    return parser


def main(argv=None):
    from evals.lib.common import command_line, machine_info, write_results

    args = make_parser().parse_args(argv)
    previous = {}
    result_path = Path(__file__).resolve().parent / "results" / f"{args.name}.json"
    if result_path.is_file():  # one part can be rerun without losing the other
        previous = json.loads(result_path.read_text())
    throughput = run_throughput(args) if "throughput" in args.parts else previous.get("throughput")
    load = run_load(args) if "load" in args.parts else previous.get("load")
    simulated = run_simulated(args) if "simulated" in args.parts else previous.get("simulated")
    machine = previous["machine"] if args.parts == ["render"] else machine_info()
    commands = {**previous.get("commands", {}), **{part: command_line() for part in args.parts if part != "render"}}
    payload = {"commands": commands, "machine": machine, "throughput": throughput, "load": load, "simulated": simulated}
    if previous.get("judges_measured"):
        payload["judges_measured"] = previous["judges_measured"]
    write_results(args.name, payload, render(throughput, load, "; ".join(commands.values()), machine, simulated))


if __name__ == "__main__":
    main()
