"""The package's architecture, checked: sub-packages by role, imports flowing one way, and no import circles."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "selfj_rlhf"
# what each sub-package may import (besides itself); see docs/models.md, "Code layout"
MAY_IMPORT = {
    "core": set(),
    "data": {"core"},
    "judge": {"core", "data"},
    "training": {"core", "data", "judge"},
    "serving": {"core", "data", "judge"},
    "rlhf": {"core", "data", "judge", "serving"},
    "cli": {"core", "data", "judge", "training", "serving", "rlhf"},
    "integrations": {"judge", "serving"},
}
# own modules imported inside a function, and why: optional heavy dependencies only
LAZY_IMPORTS = {"selfj_rlhf.serving.server": "needs the serve extra (fastapi)"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def own_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported selfj_rlhf module, whether the import sits inside a function) of one file."""
    tree = ast.parse(path.read_text())
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "selfj_rlhf":
                base = node.module.split(".")
            else:
                continue
            targets = [".".join(base)]
            if node.module is None:
                targets = [".".join(base + [alias.name]) for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.split(".")[0] == "selfj_rlhf"]
        else:
            continue
        out += [(t, id(node) not in top) for t in targets]
    return out


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        edges[name] = {target if target in modules else target.rsplit(".", 1)[0]
                       for target, _ in own_imports(path)} - {name}
    return edges


def test_top_level_shows_the_roles():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == set(MAY_IMPORT)
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "testing.py"]
    for folder in folders:
        doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), f"{folder}/__init__.py must say what it owns and what it may import"


def test_no_import_circles():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_imports_flow_one_way():
    for name, targets in graph().items():
        parts = name.split(".")
        if len(parts) < 3:  # selfj_rlhf/__init__.py and testing.py sit above the roles
            continue
        for target in targets:
            role, other = parts[1], target.split(".")[1] if target.count(".") else None
            if other and other != role and other in MAY_IMPORT:
                assert other in MAY_IMPORT[role], f"{name} imports {target}: {role} may import only {MAY_IMPORT[role]}"


def test_own_modules_are_imported_at_the_top():
    for path in PACKAGE.rglob("*.py"):
        for target, nested in own_imports(path):
            if nested:
                assert target in LAZY_IMPORTS, (f"{module_name(path)} imports {target} inside a function; import it at "
                                                f"the top (only optional heavy dependencies stay lazy)")
