"""Every YAML under recipes/ must parse strictly (no unknown keys) with its recipe's own parser."""

import importlib.util
from pathlib import Path

import pytest
import yaml

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CONFIGS = sorted((RECIPES / "configs").glob("*.yaml"))


def recipe_for(config: Path) -> Path:
    """``configs/<recipe>[_variant].yaml`` belongs to ``recipes/<recipe>.py`` (longest matching name)."""
    candidates = [p for p in RECIPES.glob("*.py") if config.stem == p.stem or config.stem.startswith(p.stem + "_")]
    assert candidates, f"{config.name}: no recipe script matches its name"
    return max(candidates, key=lambda p: len(p.stem))


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_configs():
    assert CONFIGS


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses_strictly(config):
    assert isinstance(yaml.safe_load(config.read_text()), dict)
    assert "Launch" in config.read_text().split("\n\n")[0] or "launch" in config.read_text()[:400]
    parser = load_module(recipe_for(config)).make_parser()
    parsed = parser.parse_args_and_config(["--config", str(config)])
    assert parsed


def test_unknown_key_is_rejected(tmp_path):
    bad = tmp_path / "best_of_n.yaml"
    bad.write_text("n: 2\nnot_a_field: 1\n")
    parser = load_module(RECIPES / "best_of_n.py").make_parser()
    with pytest.raises(ValueError, match="not_a_field"):
        parser.parse_args_and_config(["--config", str(bad)])
