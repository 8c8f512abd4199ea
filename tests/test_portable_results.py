"""Committed results and docs travel: no absolute machine path in them (data paths are written as <data>/...)."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MACHINE_PATH = re.compile(r"(?<![\w.<>:/-])/(?:work|root|home|tmp|Users|mnt|opt|var/folders)/[\w.-]")


def committed_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "evals/results", "docs", "README.md", "recipes"], cwd=REPO,
                            capture_output=True, text=True)
    paths = [REPO / p for p in listed.stdout.split()] if listed.returncode == 0 else []
    if not paths:  # not a git checkout: every result and doc file on disk
        paths = [*REPO.glob("evals/results/*"), *REPO.glob("docs/**/*"), REPO / "README.md", *REPO.glob("recipes/**/*")]
    return [p for p in paths if p.is_file() and p.suffix in (".md", ".json", ".yaml", ".txt")]


def test_no_absolute_machine_paths():
    offenders = []
    for path in committed_text_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    assert not offenders, "absolute machine paths in committed results/docs:\n" + "\n".join(offenders)


def test_defaults_and_results_do_not_name_the_local_data_folder():
    """Data is named by preset, spec or SELFJ_DATA_DIR, never by where it sits on one machine (../shared)."""
    listed = subprocess.run(["git", "ls-files", "selfj_rlhf", "recipes", "evals", "docs", "README.md", "scripts"],
                            cwd=REPO, capture_output=True, text=True)
    paths = [REPO / p for p in listed.stdout.split()] if listed.returncode == 0 else []
    offenders = [f"{p.relative_to(REPO)}:{n}" for p in paths if p.is_file() and p.suffix in (".py", ".md", ".json", ".yaml", ".sh")
                 for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if "../shared" in line]
    assert not offenders, "files naming ../shared:\n" + "\n".join(offenders)


def test_portable_rewrites_paths(monkeypatch, tmp_path):
    from evals.lib.common import portable

    monkeypatch.setenv("SELFJ_DATA_DIR", str(tmp_path / "data"))
    got = portable({"a": [f"{tmp_path / 'data'}/arena/grades.jsonl", f"{REPO}/runs/x"]})
    assert got == {"a": ["<data>/arena/grades.jsonl", "./runs/x"]}
