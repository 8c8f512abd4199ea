"""Judges shipped inside the package, addressed by versioned name or alias, and judge identities.

Each shipped judge has a versioned name (``selfj-smollm2-135m-v2``, ``-v3``, ...) and its own directory; the short
alias (``selfj-smollm2-135m``) names the newest version. ``judge_identity`` gives the versioned name and a content
hash of a judge directory, which every benchmark result records, so a result always says which judge it measured.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

JUDGES_DIR = Path(__file__).resolve().parent / "shipped"

# versioned name -> (directory under selfj_rlhf/judge/shipped, the embedded policy it was trained for)
SHIPPED_JUDGES: dict[str, tuple[str, str]] = {
    "selfj-smollm2-135m-v2": ("selfj-smollm2-135m-v2", "smollm2-135m-instruct"),
    "selfj-smollm2-135m-v3": ("selfj-smollm2-135m-v3", "smollm2-135m-instruct"),
    "selfj-smollm2-135m-v4": ("selfj-smollm2-135m-v4", "smollm2-135m-instruct"),
    "selfj-smollm2-135m-v5": ("selfj-smollm2-135m-v5", "smollm2-135m-instruct"),
}
# short alias -> the newest versioned name: v5 ranks the embedded policy's own samples (what best-of-n, rejection
# sampling, DPO pairs and the GRPO reward score); v3 ranks other models' answers (POOL_JUDGE)
JUDGE_ALIASES: dict[str, str] = {"selfj-smollm2-135m": "selfj-smollm2-135m-v5"}
# the shipped judge for answers of other models (AlpacaEval's SELF-J annotator): the judges of the policy's own
# samples do not rank those (evals/results/own_samples_v5.md), v3 was chosen for exactly that
# (evals/results/pool_transfer.md)
POOL_JUDGE = "selfj-smollm2-135m-v3"
# files of a judge directory that describe it rather than define it: left out of its content hash
UNHASHED_FILES = ("PROVENANCE.md",)


def versioned_name(spec: str) -> str:
    """The versioned name an alias points to; any other spec unchanged."""
    return JUDGE_ALIASES.get(spec, spec)


def shipped_judge_available(name: str) -> bool:
    name = versioned_name(name)
    return name in SHIPPED_JUDGES and (JUDGES_DIR / SHIPPED_JUDGES[name][0] / "selfj_config.json").is_file()


def default_judge_for(policy: str) -> str:
    """The judge a recipe uses when ``--judge`` is not given: the alias of the shipped trained judge for an embedded
    policy when the package has one, otherwise the policy judging itself zero-shot."""
    for alias, name in JUDGE_ALIASES.items():
        if SHIPPED_JUDGES[name][1] == policy and shipped_judge_available(name):
            return alias
    return policy


def resolve_judge_dir(spec: str) -> Path | None:
    """The judge directory a spec names (alias, versioned name, or a directory with ``selfj_config.json``)."""
    name = versioned_name(spec)
    if name in SHIPPED_JUDGES:
        directory = JUDGES_DIR / SHIPPED_JUDGES[name][0]
        if not (directory / "selfj_config.json").is_file():
            raise FileNotFoundError(f"shipped judge '{spec}' is not present in this installation ({directory})")
        return directory
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "selfj_config.json").is_file():
        return path
    return None


def directory_hash(directory: str | Path) -> str:
    """sha256 over the relative paths and bytes of a judge directory's files (provenance notes left out), short."""
    digest = hashlib.sha256()
    root = Path(directory)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in UNHASHED_FILES):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def judge_identity(spec: str) -> dict:
    """``{"name", "hash"}`` of the judge a spec loads: a shipped judge by versioned name, a judge directory by its
    folder name, both with their content hash; a model judging zero-shot by its spec, with no hash."""
    directory = resolve_judge_dir(spec)
    if directory is None:
        return {"name": spec, "hash": None}
    name = versioned_name(spec) if versioned_name(spec) in SHIPPED_JUDGES else directory.name
    return {"name": name, "hash": directory_hash(directory)}
