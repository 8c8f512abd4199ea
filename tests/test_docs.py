"""The docs: the results page matches the JSON, every guide page is one click from the README and holds runnable
commands, links resolve, and the text speaks of the project only."""

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
CAPABILITY_PAGES = ("judge-training", "rlhf", "judge-server", "alpacaeval", "selective", "gpu-scale", "performance",
                    "reliability", "models")


def test_results_page_is_generated_from_the_json():
    from evals.render_results import DOCS_PAGE, render

    assert DOCS_PAGE.read_text() == render(), "docs/results.md is stale: run python -m evals.render_results"


def test_readme_is_short_and_links_every_capability_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 160
    linked = set(LINK.findall(readme))
    for page in CAPABILITY_PAGES:
        assert f"docs/{page}.md" in linked, f"README does not link docs/{page}.md"
    assert "docs/results.md" in linked


@pytest.mark.parametrize("page", CAPABILITY_PAGES)
def test_each_capability_page_has_runnable_commands(page):
    text = (REPO / "docs" / f"{page}.md").read_text()
    blocks = re.findall(r"```(?:bash|python)\n(.*?)```", text, re.S)
    assert blocks, f"docs/{page}.md has no command block"
    assert any(re.search(r"(python|accelerate launch|selfj |bash |trl )", block) for block in blocks)


def test_links_resolve():
    broken = []
    for doc in [REPO / "README.md", REPO / "recipes" / "README.md", *(REPO / "docs").glob("*.md")]:
        for target in LINK.findall(doc.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_docs_speak_of_the_project_only():
    assert (REPO / "selfj_rlhf" / "judge" / "shipped").is_dir()  # the PROVENANCE files are scanned too
    words = re.compile(r"\b(sessions?|lent|this round|the previous round|we were given)\b", re.I)
    offenders = []
    for doc in [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "selfj_rlhf" / "judge" / "shipped").rglob("*.md")]:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            if words.search(line):
                offenders.append(f"{doc.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert not offenders, "\n".join(offenders)


def test_results_name_the_judge_version_they_measured():
    """A result that ran a shipped judge by its alias records the versioned name and content hash it measured, and
    the results page marks every result measured with a judge other than the current one."""
    import json

    from evals.render_results import judge_cell

    from selfj_rlhf.judge.directory import JUDGE_ALIASES, POOL_JUDGE, judge_identity

    for path in sorted((REPO / "evals" / "results").glob("*.json")):
        payload = json.loads(path.read_text())
        values = json.dumps({k: v for k, v in payload.items() if k not in ("command", "commands")})
        for alias in JUDGE_ALIASES:
            assert f'"{alias}"' not in values, f"{path.name} names the alias {alias} instead of a version"
            ran = re.search(rf"(?<![\w/.-]){re.escape(alias)}(?![\w-])", json.dumps(payload.get("command") or
                                                                                 payload.get("commands") or ""))
            if ran:  # the alias itself, not a run directory that happens to share its name
                assert payload.get("judges_measured"), f"{path.name} ran {alias} but records no judges_measured"
    current = judge_identity("selfj-smollm2-135m")
    assert judge_cell({"judges_measured": [{"label": "j", **current}]}) == current["name"]
    pool = judge_identity(POOL_JUDGE)  # the shipped judge for other models' answers is current too
    assert judge_cell({"judges_measured": [{"label": "j", **pool}]}) == pool["name"]
    old = {"label": "j", "name": "selfj-smollm2-135m-v1", "hash": "0" * 16}
    assert judge_cell({"judges_measured": [old]}) == "selfj-smollm2-135m-v1 (not the current judge)"


def test_flag_reference_is_generated_from_the_config_dataclasses():
    sys.path.insert(0, str(REPO / "scripts"))
    from render_reference import PAGE, render

    page = render()
    assert PAGE.read_text() == page, "docs/reference.md is stale: run python scripts/render_reference.py"
    for flag in ("--length_control", "--max_batch_tokens", "--raw", "--n", "--head_layer"):
        assert f"`{flag}`" in page


MEASUREMENT = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?:\s?(?:s|min|%)(?!\w)|x(?!\w))")
RESULT_CITATION = re.compile(r"evals/results/\w+\.(?:md|json|png)|results\.md|\b(?:%s)\.md\b" % "|".join(
    sorted(p.stem for p in (REPO / "evals" / "results").glob("*.json"))))


def measurement_blocks(text: str):
    """Paragraphs, list items and tables (each with the paragraph before it) outside code fences."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    blocks = [b for b in re.split(r"\n\s*\n", text) if b.strip()]
    merged = []
    for block in blocks:
        if block.lstrip().startswith("|") and merged:
            merged[-1] += "\n" + block
        else:
            merged.append(block)
    return merged


def test_every_measured_number_cites_its_result():
    """A number with a unit (s, min, %, x) in the guide is a measurement: its paragraph (or table with its caption)
    names the committed result it comes from. Estimates say so and are exempt."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    unbacked = []
    for page in pages:
        if page.name in ("results.md", "reference.md"):  # generated from the results and the code
            continue
        for block in measurement_blocks(page.read_text()):
            if MEASUREMENT.search(block) and not RESULT_CITATION.search(block) and "estimate" not in block.lower():
                unbacked.append(f"{page.relative_to(REPO)}: {MEASUREMENT.search(block).group(0)!r} in "
                                f"{' '.join(block.split())[:120]}")
    assert not unbacked, "measurements without a cited result:\n" + "\n".join(unbacked)


def test_code_cites_only_results_that_exist():
    """Help texts and docstrings that point at a benchmark result point at a committed one."""
    cited = set()
    for path in [*(REPO / "selfj_rlhf").rglob("*.py"), *(REPO / "recipes").glob("*.py")]:
        cited |= {(path.name, name) for name in re.findall(r"evals/results/([\w.-]+\.md)", path.read_text())}
    missing = [f"{source}: {name}" for source, name in sorted(cited) if not (REPO / "evals" / "results" / name).is_file()]
    assert cited and not missing, missing


def test_a_subcommand_default_is_not_contradicted_by_its_help():
    """docs/reference.md: where a subcommand overrides a field's default, the dataclass's "Default: ..." sentence
    is left out of the help (it would name another default)."""
    import dataclasses
    import importlib.util

    from selfj_rlhf.cli.main import SUBCOMMANDS

    spec = importlib.util.spec_from_file_location("render_reference", REPO / "scripts" / "render_reference.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    checked = 0
    for sub in SUBCOMMANDS.values():
        for config in sub.config_classes():
            for item in dataclasses.fields(config) if dataclasses.is_dataclass(config) else []:
                if item.name in sub.defaults:
                    assert "Default:" not in render.field_help(item, sub.defaults), item.name
                    checked += 1
    assert checked


def test_commands_on_other_models_answers_name_the_pool_judge():
    """Model ranking, judge correlation and selective prediction score other models' answers: their documented
    commands use the judge of that role, not the judge of the embedded policy's own samples."""
    command = re.compile(r"evals\.(model_ranking|judge_correlation|selective)\b[^\n]*--judge \w+=selfj-smollm2-135m(?![\w-])")
    offenders = [f"{path.relative_to(REPO)}: {match.group(0)[:80]}"
                 for path in [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "evals").glob("*.py")]
                 if path.name != "results.md" for match in command.finditer(path.read_text())]
    assert not offenders, offenders


def test_every_subcommand_and_recipe_help_renders():
    """argparse formats help with %: a stray percent sign in a field's help breaks --help."""
    import importlib.util

    from selfj_rlhf.cli.main import SUBCOMMANDS

    for name, sub in SUBCOMMANDS.items():
        if sub.configs:
            assert sub.parser().format_help(), name
    for script in sorted((REPO / "recipes").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"recipe_{script.stem}", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.make_parser().format_help(), script.name
