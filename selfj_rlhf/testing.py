"""A tiny random Llama with the embedded SmolLM2 tokenizer, for smoke tests of recipes and pipelines
(the test suite and the reliability campaigns use it; it runs anywhere in seconds)."""

from __future__ import annotations

import threading
from pathlib import Path

from .core.models import embedded_gguf_path
from .judge.self_judge import ScoreDetails, token_budget_batches
from .judge.templates import DEFAULT_TEMPLATE, get_template


def build_tiny_llama(directory: str | Path, seed: int = 0) -> Path:
    """Save a 2-layer random Llama (hidden 64) with the SmolLM2-135M-Instruct tokenizer and chat template
    into ``directory`` (reused when already there) and return it."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    if (directory / "config.json").is_file():
        return directory
    gguf = embedded_gguf_path("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


class ServerThread:
    """A uvicorn server for an ASGI app on a background thread of this process (port 0: a free port), for tests and
    benchmarks::

        with ServerThread(create_app(judge)) as url:
            httpx.post(url + "/get_reward", json=...)
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    timeout_graceful_shutdown=10))
        self.host = host
        self._thread = None

    def __enter__(self) -> str:
        import threading
        import time

        self._thread = threading.Thread(target=self.server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JudgeServerProcess:
    """``selfj serve`` in a subprocess on a free loopback port, started as users start it (tests and the load
    benchmark); ``start`` returns once ``/health`` answers, ``stop`` sends SIGTERM."""

    def __init__(self, judge: str, *flags: str, env: dict | None = None):
        import os
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [sys.executable, "-m", "selfj_rlhf.cli.main", "serve", "--judge", judge, "--port", str(self.port),
                     "--log_level", "warning", *flags]
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        self.proc = None

    def start(self, timeout: float = 300) -> None:
        import subprocess
        import tempfile
        import time

        import httpx

        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would block the server
        self.proc = subprocess.Popen(self.argv, cwd=Path(__file__).resolve().parents[1], env=self.env,
                                     stderr=self._stderr)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._stderr.seek(0)
                tail = self._stderr.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"selfj serve exited with {self.proc.returncode}: {tail}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"selfj serve did not answer /health within {timeout} s")

    def stop(self, timeout: float = 120) -> bool:
        """SIGTERM and wait; True for a clean exit (status 0), False when it had died already or exited otherwise."""
        import signal

        if self.proc.poll() is not None:
            return False
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout) == 0


class JudgeBehind:
    """A judge with ``before()`` run ahead of every scoring call: a delay, so requests queue or time out, or an
    exception, so the batch fails (server tests and the abuse benchmark)."""

    def __init__(self, judge, before):
        self.__dict__.update(judge.__dict__)
        self._judge, self._before = judge, before

    def __getattr__(self, name):
        return getattr(self._judge, name)

    def score_details(self, *args, **kwargs):
        self._before()
        return self._judge.score_details(*args, **kwargs)


class SimulatedDeviceJudge:
    """A judge that costs what a GPU judge costs, for testing serving on a CPU.

    Each forward (one device call, whatever its size) takes ``latency_s + per_item_s x items``, so a batch of 32 costs
    little more than a batch of 1, as on a GPU, and one call runs at a time (calls from several threads queue). A share ``gil_share`` of that time is spent busy in Python holding the GIL, as eager PyTorch
    does while it launches kernels, and the rest asleep, as the host is while the device computes: the server's event
    loop has to live with both. Scores are a deterministic function of the text, on 0-9; the judge records the size
    of every forward in ``forward_sizes``. It has the attributes and methods the server uses of a ``SelfJudge``.
    """

    def __init__(self, tokenizer, *, latency_s: float = 0.2, per_item_s: float = 0.002, gil_share: float = 0.3,
                 max_length: int = 1024):
        import torch

        self.tokenizer = tokenizer
        self.template = get_template(DEFAULT_TEMPLATE)
        self.device = torch.device("cpu")
        self.max_length = max_length
        self.length_control = False
        self.latency_s, self.per_item_s, self.gil_share = latency_s, per_item_s, gil_share
        self.forward_sizes: list[int] = []
        self._device = threading.Lock()  # one device: calls run one at a time

    def template_token_count(self, with_reference: bool = True) -> int:
        return 40

    def forward_seconds(self, items: int) -> float:
        return self.latency_s + self.per_item_s * items

    def _forward(self, items: int) -> None:
        import time

        total = self.forward_seconds(items)
        with self._device:
            busy_until = time.perf_counter() + self.gil_share * total
            while time.perf_counter() < busy_until:  # launching kernels: the GIL is held
                pass
            time.sleep((1 - self.gil_share) * total)  # the device computes: the GIL is free
            self.forward_sizes.append(items)

    def score_details(self, instructions, responses, references=None, batch_size: int = 8, progress: bool = False,
                      max_batch_tokens: int | None = None):
        import zlib

        lengths = [len(i) + len(r) for i, r in zip(instructions, responses)]
        for batch in token_budget_batches(lengths, batch_size, max_batch_tokens):
            self._forward(len(batch))
        scores = [9 * (zlib.crc32(f"{i}\0{r}".encode()) % 10_000) / 9_999 for i, r in zip(instructions, responses)]
        return [ScoreDetails(score=s, probs=[], digit_mass=1.0, argmax=round(s), raw_score=s) for s in scores]


def one_sample_clients(url: str, items: list[tuple[str, str]], concurrency: int, timeout_s: float = 300) -> dict:
    """Score ``items`` through a judge server from ``concurrency`` clients in another process, each sending one item
    per request and the next when the answer came, as RL engines do. Returns ``{"items", "wall_s", "items_per_s"}``."""
    import json
    import subprocess
    import sys

    # aiohttp, as RL engines' clients use it: httpx's client costs more per request than the server under test
    script = (
        "import asyncio, json, sys, time\n"
        "import aiohttp\n"
        "url, concurrency, items = json.loads(sys.stdin.read())\n"
        "async def main():\n"
        "    queue = list(items)\n"
        "    async def client(http):\n"
        "        while queue:\n"
        "            prompt, response = queue.pop(0)\n"
        "            async with http.post(url + '/get_reward', json={'prompts': [prompt], 'responses': [response]}) as r:\n"
        "                r.raise_for_status()\n"
        "                await r.read()\n"
        "    connector = aiohttp.TCPConnector(limit=concurrency)\n"
        "    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as http:\n"
        "        start = time.perf_counter()\n"
        "        await asyncio.gather(*(client(http) for _ in range(concurrency)))\n"
        "        return time.perf_counter() - start\n"
        "wall = asyncio.run(main())\n"
        "print(json.dumps({'items': len(items), 'wall_s': wall, 'items_per_s': len(items) / wall}))\n")
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps([url, concurrency, items]), text=True,
                          capture_output=True, timeout=timeout_s, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])
