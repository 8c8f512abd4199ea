"""Judges shipped inside the package, addressed by versioned name or alias; judge roles; judge identities.

A judge has a job, its **role**: ranking one policy's own samples (``own_samples``: best-of-n, rejection sampling, DPO
pairs, the GRPO reward of that policy), or ranking other models' answers (``other_models``: the AlpacaEval annotator,
model ranking). The project's results show neither kind does the other's job, so every judge directory records its
role and the policy it was trained for (``selfj_config.json``: ``role``, ``policy``), and using a judge outside its
role warns once, naming the judge to use (``warn_if_outside_role``).

Each shipped judge has a versioned name (``selfj-smollm2-135m-v2``, ``-v3``, ...) and its own directory; each short
alias names one role's newest version and moves only within that role: ``selfj-smollm2-135m`` ranks the embedded
policy's own samples, ``selfj-smollm2-135m-pool`` other models' answers. ``judge_identity`` gives the versioned name
and a content hash of a judge directory, which every benchmark result records, so a result always says which judge
it measured.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

JUDGES_DIR = Path(__file__).resolve().parent / "shipped"

# versioned name -> (directory under selfj_rlhf/judge/shipped, the embedded policy it was trained for)
SHIPPED_JUDGES: dict[str, tuple[str, str]] = {
    "selfj-smollm2-135m-v2": ("selfj-smollm2-135m-v2", "smollm2-135m-instruct"),
    "selfj-smollm2-135m-v3": ("selfj-smollm2-135m-v3", "smollm2-135m-instruct"),
    "selfj-smollm2-135m-v4": ("selfj-smollm2-135m-v4", "smollm2-135m-instruct"),
    "selfj-smollm2-135m-v5": ("selfj-smollm2-135m-v5", "smollm2-135m-instruct"),
    "selfj-smollm2-135m-v6": ("selfj-smollm2-135m-v6", "smollm2-135m-instruct"),
    "selfj-smollm2-135m-v7": ("selfj-smollm2-135m-v7", "smollm2-135m-instruct"),
    "selfj-smollm2-135m-v8": ("selfj-smollm2-135m-v8", "smollm2-135m-instruct"),
    "selfj-smollm2-135m-v9": ("selfj-smollm2-135m-v9", "smollm2-135m-instruct"),
}
OWN_SAMPLES, OTHER_MODELS = "own_samples", "other_models"
ROLES = (OWN_SAMPLES, OTHER_MODELS)
# short alias -> (its role, the newest versioned name of that role): v6 ranks the embedded policy's own samples (what
# best-of-n, rejection sampling, DPO pairs and the GRPO reward score; built by the recipes' own-samples chain and
# checked with the attack probe, evals/results/own_samples_chain.md), v9 ranks other models' answers (AlpacaEval's
# SELF-J annotator; built by label_pool_all.yaml and train_judge_pool.yaml, probed in evals/results/probe_shipped.md;
# v8's head with the echo guard)
ROLE_ALIASES: dict[str, tuple[str, str]] = {
    "selfj-smollm2-135m": (OWN_SAMPLES, "selfj-smollm2-135m-v6"),
    "selfj-smollm2-135m-pool": (OTHER_MODELS, "selfj-smollm2-135m-v9"),
}
JUDGE_ALIASES: dict[str, str] = {alias: name for alias, (_, name) in ROLE_ALIASES.items()}
# the shipped judge for answers of other models (AlpacaEval's SELF-J annotator, model ranking)
POOL_JUDGE = "selfj-smollm2-135m-pool"
# files of a judge directory that describe it rather than define it: left out of its content hash
UNHASHED_FILES = ("PROVENANCE.md",)
# keys of selfj_config.json that describe the judge's job rather than how it scores: left out of its content hash,
# so that naming a judge's role does not make it another judge
UNHASHED_CONFIG_KEYS = ("role", "policy")
CONFIG_FILE = "selfj_config.json"


def versioned_name(spec: str) -> str:
    """The versioned name an alias points to; any other spec unchanged."""
    return JUDGE_ALIASES.get(spec, spec)


def shipped_judge_available(name: str) -> bool:
    name = versioned_name(name)
    return name in SHIPPED_JUDGES and (JUDGES_DIR / SHIPPED_JUDGES[name][0] / "selfj_config.json").is_file()


def shipped_judge_for(policy: str, role: str) -> str | None:
    """The alias of the shipped judge of ``role`` for ``policy``, if the package has one."""
    for alias, (alias_role, name) in ROLE_ALIASES.items():
        if alias_role == role and SHIPPED_JUDGES[name][1] == policy and shipped_judge_available(name):
            return alias
    return None


def default_judge_for(policy: str) -> str:
    """The judge a loop uses when ``--judge`` is not given: the shipped judge of the policy's own samples for an
    embedded policy when the package has one, otherwise the policy judging itself zero-shot."""
    return shipped_judge_for(policy, OWN_SAMPLES) or policy


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


def _hashed_bytes(path: Path) -> bytes:
    """A file's bytes as the content hash reads them: ``selfj_config.json`` without its descriptive keys, written as
    judge directories write it (so a config that never had them hashes as its bytes)."""
    if path.name != CONFIG_FILE:
        return path.read_bytes()
    config = json.loads(path.read_text(encoding="utf-8"))
    if not any(key in config for key in UNHASHED_CONFIG_KEYS):
        return path.read_bytes()
    kept = {k: v for k, v in config.items() if k not in UNHASHED_CONFIG_KEYS}
    return (json.dumps(kept, ensure_ascii=False, indent=2, allow_nan=False) + "\n").encode("utf-8")


def directory_hash(directory: str | Path) -> str:
    """sha256 over the relative paths and contents of a judge directory's files (provenance notes and the role
    keys left out), short."""
    digest = hashlib.sha256()
    root = Path(directory)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in UNHASHED_FILES):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + _hashed_bytes(path))
    return digest.hexdigest()[:16]


def judge_role(spec: str) -> tuple[str | None, str | None]:
    """``(role, policy)`` recorded in the judge directory a spec names; ``(None, None)`` for a model judging
    zero-shot or a directory that records none."""
    directory = resolve_judge_dir(spec)
    if directory is None:
        return None, None
    config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    return config.get("role"), config.get("policy")


class JudgeRoleWarning(UserWarning):
    """A judge used for a job it was not trained for (see the module docstring)."""


_WARNED: set[tuple] = set()
OWN_SAMPLES_RECIPES = ("recipes/configs/sample_own.yaml, label_own_samples.yaml and train_judge_own_samples.yaml "
                       "build one")


def warn_if_outside_role(judge: str, use: str, policy: str | None = None, where: str = "") -> bool:
    """Warn once (per judge, use, policy and place) when ``judge`` is used outside its role, naming the judge to use.

    ``use``: ``other_models`` (it scores other models' answers: an annotator, model ranking, judge correlation) or
    ``own_samples`` (it ranks ``policy``'s samples: a reward, best-of-n, rounds). Returns whether it warned.
    """
    if use not in ROLES:
        raise ValueError(f"use must be one of {ROLES}, got {use!r}")
    role, trained_for = judge_role(judge)
    if role is None:
        return False
    context = f" ({where})" if where else ""
    if use == OTHER_MODELS and role == OWN_SAMPLES:
        instead = shipped_judge_for(trained_for, OTHER_MODELS) if trained_for else None
        message = (f"judge '{judge}' ranks the own samples of {trained_for}, not other models' answers{context}: "
                   + (f"use '{instead}'" if instead else "use a judge trained on a response pool of other models "
                                                         "(recipes/configs/label_pool_all.yaml, train_judge_pool.yaml)"))
    elif use == OWN_SAMPLES and role == OTHER_MODELS:
        instead = shipped_judge_for(policy, OWN_SAMPLES) if policy else None
        whose = f"the samples of policy '{policy}'" if policy else "a policy's own samples"
        message = (f"judge '{judge}' ranks other models' answers, not {whose}{context}: "
                   + (f"use '{instead}'" if instead else f"train a judge of this policy's own samples "
                                                         f"({OWN_SAMPLES_RECIPES})"))
    elif use == OWN_SAMPLES and policy is not None and trained_for is not None and trained_for != policy:
        instead = shipped_judge_for(policy, OWN_SAMPLES)
        message = (f"judge '{judge}' was trained on the samples of {trained_for}, not of policy '{policy}'{context}: "
                   + (f"use '{instead}'" if instead else f"train one for this policy ({OWN_SAMPLES_RECIPES})"))
    else:
        return False
    key = (judge, use, policy, where)
    if key in _WARNED:
        return False
    _WARNED.add(key)
    warnings.warn(message, JudgeRoleWarning, stacklevel=2)
    return True


def judge_identity(spec: str) -> dict:
    """``{"name", "hash"}`` of the judge a spec loads: a shipped judge by versioned name, a judge directory by its
    folder name, both with their content hash; a model judging zero-shot by its spec, with no hash."""
    directory = resolve_judge_dir(spec)
    if directory is None:
        return {"name": spec, "hash": None}
    # a published directory is a link to a hidden version (core.io.publish_directory): the judge is named by the link
    name = versioned_name(spec) if versioned_name(spec) in SHIPPED_JUDGES else Path(spec).expanduser().name
    return {"name": name, "hash": directory_hash(directory)}
