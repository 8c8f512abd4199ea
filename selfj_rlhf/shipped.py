"""Judges shipped inside the package, addressed by alias, and judge-directory detection."""

from __future__ import annotations

from pathlib import Path

JUDGES_DIR = Path(__file__).resolve().parent / "judges"

# alias -> (directory under selfj_rlhf/judges, the embedded policy it was trained for)
SHIPPED_JUDGES: dict[str, tuple[str, str]] = {
    "selfj-smollm2-135m": ("selfj-smollm2-135m", "smollm2-135m-instruct"),
}


def shipped_judge_available(alias: str) -> bool:
    return alias in SHIPPED_JUDGES and (JUDGES_DIR / SHIPPED_JUDGES[alias][0] / "selfj_config.json").is_file()


def default_judge_for(policy: str) -> str:
    """The judge a recipe uses when ``--judge`` is not given: the shipped trained judge for an embedded
    policy when the package has one, otherwise the policy judging itself zero-shot."""
    for alias, (_, base) in SHIPPED_JUDGES.items():
        if base == policy and shipped_judge_available(alias):
            return alias
    return policy


def resolve_judge_dir(spec: str) -> Path | None:
    """The judge directory a spec names (shipped alias or a directory with ``selfj_config.json``), else None."""
    if spec in SHIPPED_JUDGES:
        directory = JUDGES_DIR / SHIPPED_JUDGES[spec][0]
        if not (directory / "selfj_config.json").is_file():
            raise FileNotFoundError(f"shipped judge '{spec}' is not present in this installation ({directory})")
        return directory
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "selfj_config.json").is_file():
        return path
    return None
