"""Make ``accelerate launch --cpu --num_processes N`` start N processes.

accelerate's simple launcher runs the script once when ``--cpu`` is given, however large
``--num_processes`` is (multi-CPU needs an mpirun hostfile; huggingface/accelerate#2741). It does export
``MASTER_ADDR``/``MASTER_PORT`` when N > 1. A recipe started that way re-launches itself as N workers
with ``RANK``/``WORLD_SIZE`` set, which accelerate then runs as a MULTI_CPU (gloo) job.
"""

from __future__ import annotations

import os
import subprocess
import sys


def _requested_num_processes() -> int:
    """N from the parent ``accelerate launch`` command line (``--num_processes N``, ``--num_processes=N``,
    or ``num_processes`` in its ``--config_file``)."""
    if os.environ.get("SELFJ_CPU_NUM_PROCESSES"):
        return int(os.environ["SELFJ_CPU_NUM_PROCESSES"])
    try:
        import psutil

        argv = psutil.Process(os.getppid()).cmdline()
    except Exception:  # no parent info: stay single-process
        return 1
    flags = _flag_values(argv)
    if "--num_processes" in flags:
        return int(flags["--num_processes"])
    if "--config_file" in flags:
        import yaml

        with open(flags["--config_file"]) as fh:
            return int((yaml.safe_load(fh) or {}).get("num_processes", 1))
    return 1


def _flag_values(argv: list[str]) -> dict[str, str]:
    """``--flag value`` and ``--flag=value`` pairs of a command line (up to the script path)."""
    values = {}
    for index, arg in enumerate(argv):
        if arg.endswith(".py"):
            break
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
            values[name] = value
        elif arg.startswith("--") and index + 1 < len(argv):
            values[arg] = argv[index + 1]
    return values


def spawn_cpu_workers_if_requested() -> int | None:
    """In an accelerate ``--cpu`` launch that asked for N > 1 processes, run N workers and return their
    exit code; return None when this process should simply run the job itself."""
    distributed_env = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true") or "MASTER_PORT" not in os.environ:
        return None
    if any(name in os.environ for name in distributed_env):
        return None
    world = _requested_num_processes()
    if world <= 1:
        return None
    threads = max(1, (os.cpu_count() or 1) // world)
    port = os.environ["MASTER_PORT"] if _port_was_asked_for() else str(_free_port())
    workers = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS=str(threads), MASTER_PORT=port)
        workers.append(subprocess.Popen([sys.executable, *sys.argv], env=env))
    return _wait_all(workers)


def _port_was_asked_for() -> bool:
    """Whether the launch named its port (``--main_process_port``); otherwise accelerate's fixed default 29500
    would make two CPU jobs on one machine collide, so the workers get a free port instead."""
    try:
        import psutil

        return "--main_process_port" in _flag_values(psutil.Process(os.getppid()).cmdline())
    except Exception:
        return True


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_all(workers: list[subprocess.Popen]) -> int:
    """Wait for every worker; when one fails, stop the others (they would block at the next barrier)."""
    import time

    while True:
        codes = [worker.poll() for worker in workers]
        failed = next((code for code in codes if code not in (None, 0)), None)
        if failed is not None:
            for worker in workers:
                if worker.poll() is None:
                    worker.terminate()
            for worker in workers:
                worker.wait()
            return failed
        if all(code == 0 for code in codes):
            return 0
        time.sleep(0.2)
