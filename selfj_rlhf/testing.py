"""A tiny random Llama with the embedded SmolLM2 tokenizer, for smoke tests of recipes and pipelines
(the test suite and the reliability campaigns use it; it runs anywhere in seconds)."""

from __future__ import annotations

from pathlib import Path


def build_tiny_llama(directory: str | Path, seed: int = 0) -> Path:
    """Save a 2-layer random Llama (hidden 64) with the SmolLM2-135M-Instruct tokenizer and chat template
    into ``directory`` (reused when already there) and return it."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    from .models import embedded_gguf_path

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
        self.argv = [sys.executable, "-m", "selfj_rlhf.console", "serve", "--judge", judge, "--port", str(self.port),
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
