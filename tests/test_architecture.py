"""The package's shape: no import loop between stage packages, a small package root, and
docs/architecture.md's stage table in step with rules/*.smk."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "trainrelay"

# The stage packages, in DAG order (upstream first). Any of them may import an upstream one.
STAGE_PACKAGES = (
    "data",
    "tune",
    "forecast",
    "policy",
    "export",
    "benchmark",
    "package",
    "report",
    "lookahead",
)
# Shared services: they import no stage package and nothing of the Snakemake/platform/CLI layers.
CORE = "core"
OUTER = ("workflow", "platforms", "commands")
# What the package root may hold (``__init__`` and ``__main__`` included). Raise it only with a
# reason: a new module belongs in a subpackage that says what it is.
MAX_ROOT_MODULES = 9


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a import b`` gives both ``a`` and ``a.b``)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return found


def _unit(module: str) -> str | None:
    """The subpackage (or root module) of a trainrelay module; None outside trainrelay."""
    parts = module.split(".")
    if parts[0] != "trainrelay" or len(parts) < 2:
        return None
    name = parts[1]
    return name if (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file() else None


def import_graph() -> dict[str, dict[str, list[str]]]:
    """unit -> {imported unit -> [file:line of the first few imports]} for trainrelay/**.py."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _unit(_module_name(path))
        if source is None:
            continue
        edges = graph.setdefault(source, {})
        for target in filter(None, map(_unit, _imports(path))):
            if target != source:
                edges.setdefault(target, []).append(str(path.relative_to(ROOT)))
    return graph


def cycles(graph: dict[str, dict[str, list[str]]], nodes: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one node among ``nodes`` (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, {}):
            if target not in nodes:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(nodes):
        if node not in index:
            visit(node)
    return found


def test_every_subpackage_is_classified():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == {*STAGE_PACKAGES, CORE, *OUTER}, "add the new subpackage to this test's lists"


def test_no_import_loop_between_subpackages():
    graph = import_graph()
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    loops = cycles(graph, packages)
    assert not loops, "import loop(s): " + "; ".join(
        " <-> ".join(loop)
        + " ("
        + ", ".join(f"{a}->{b}: {graph[a][b][0]}" for a in loop for b in loop if b in graph.get(a, {}))
        + ")"
        for loop in loops
    )


def test_cycle_detection_finds_a_loop():
    graph = {"forecast": {"bench": ["x"]}, "bench": {"export": ["y"]}, "export": {"forecast": ["z"]}}
    assert cycles(graph, {"forecast", "bench", "export", "data"}) == [["bench", "export", "forecast"]]


def test_core_imports_no_stage_or_outer_package():
    edges = import_graph().get(CORE, {})
    assert not set(edges) & {*STAGE_PACKAGES, *OUTER}, edges


@pytest.mark.parametrize("package", STAGE_PACKAGES)
def test_stage_packages_do_not_import_the_outer_layers(package):
    edges = import_graph().get(package, {})
    assert not set(edges) & set(OUTER), {k: v for k, v in edges.items() if k in OUTER}


def test_package_root_stays_small():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= MAX_ROOT_MODULES, (
        f"trainrelay/ holds {len(modules)} modules ({', '.join(modules)}); "
        f"at most {MAX_ROOT_MODULES}: put the new one in the subpackage that says what it is"
    )


# --- docs/architecture.md's stage table -------------------------------------------------------

RULE_RE = re.compile(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", re.S | re.M)
SCRIPT_RE = re.compile(r'^    script:\s*\n\s+"\.\./(scripts/[\w/]+\.py)"', re.M)


def workflow_rules() -> dict[str, tuple[str, str | None]]:
    """rule -> (rule file, script) for every rule in rules/*.smk."""
    rules: dict[str, tuple[str, str | None]] = {}
    for path in sorted((ROOT / "rules").glob("*.smk")):
        text = path.read_text(encoding="utf-8")
        for match in RULE_RE.finditer(text):
            script = SCRIPT_RE.search(match.group(2))
            rules[match.group(1)] = (f"rules/{path.name}", script.group(1) if script else None)
    return rules


def stage_table(text: str) -> dict[str, dict[str, object]]:
    """rule -> {rule_file, script, modules} from the table under "## Stages"."""
    section = text.split("## Stages", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, dict[str, object]] = {}
    for line in section.splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0].startswith("Stage"):
            continue
        stage, rule_file, script, modules = cells[0], cells[1], cells[2], cells[3]
        rows[stage] = {
            "rule_file": rule_file,
            "script": script if script.startswith("scripts/") else None,
            "modules": [m.strip() for m in modules.split(",") if m.strip().startswith("trainrelay")],
        }
    return rows


def _module_exists(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_stage_table_matches_the_rules():
    table = stage_table((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    rules = workflow_rules()
    assert rules, "no rules parsed from rules/*.smk"
    assert sorted(set(rules) - set(table)) == [], "rules missing from docs/architecture.md"
    assert sorted(set(table) - set(rules)) == [], "docs/architecture.md lists rules that do not exist"
    for rule, (rule_file, script) in rules.items():
        row = table[rule]
        assert row["rule_file"] == rule_file, (
            f"{rule}: the table says {row['rule_file']}, it is in {rule_file}"
        )
        assert row["script"] == script, f"{rule}: the table says {row['script']}, the rule runs {script}"


def test_stage_table_modules_exist_and_are_what_the_scripts_call():
    table = stage_table((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    for rule, row in table.items():
        for module in row["modules"]:
            assert _module_exists(module), f"{rule}: {module} does not exist"
        if row["script"]:
            imported = _imports(ROOT / str(row["script"]))
            missing = [m for m in row["modules"] if m not in imported]
            assert not missing, f"{rule}: {row['script']} does not import {missing}"


def test_stage_table_parser_sees_a_broken_row():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    broken = text.replace(
        "| rules/forecast.smk | scripts/precompute.py |", "| rules/forecast.smk | scripts/nope.py |"
    )
    assert broken != text
    assert stage_table(broken)["precompute"]["script"] == "scripts/nope.py"
