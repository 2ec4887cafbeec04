"""The shape of the code, checked: short functions and files, no import cycles inside align/, a reward/ package that
needs nothing of align/, and a stage registry that imports nothing heavy."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("align", "reward")
MAX_FUNCTION_LINES, MAX_FILE_LINES = 80, 600


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every align/reward module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name.split(".")[0] in PACKAGES}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in sources()}
    return {name: {m for m in imported_modules(path) if m in modules and m != name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a list of modules that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [node, target] if target in path else [node, target]
            if target not in state:
                found = visit(target, path + [node])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


def test_no_function_is_longer_than_80_lines():
    lengths = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(REPO)}:{node.name}"))
    lengths.sort(reverse=True)
    print("longest functions:", lengths[:5])
    assert [f"{name} ({n} lines)" for n, name in lengths if n > MAX_FUNCTION_LINES] == []


def test_no_file_is_longer_than_600_lines():
    sizes = sorted(((len(p.read_text().splitlines()), str(p.relative_to(REPO))) for p in sources()), reverse=True)
    print("largest files:", sizes[:5])
    assert [f"{name} ({n} lines)" for n, name in sizes if n > MAX_FILE_LINES] == []


def test_no_import_cycle_inside_the_packages():
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_reward_needs_nothing_of_align():
    graph = import_graph()
    assert {m: sorted(t) for m, t in graph.items() if m.startswith("reward") and
            any(x.startswith("align") for x in t)} == {}


@pytest.mark.parametrize("module", ["align.registry", "align.report", "reward.verifiers"])
def test_light_modules_import_no_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_every_registered_stage_has_its_config_class_and_train_function():
    import inspect

    from align.registry import STAGES, config_class, stage_module

    for name in STAGES:
        assert config_class(name)().stage == name, name
        assert "restart" in inspect.signature(stage_module(name).train).parameters, name


def test_ruff_finds_nothing():
    """pyproject.toml's [tool.ruff] rules (pyflakes, pycodestyle errors, 120 columns) over the whole repository."""
    pytest.importorskip("ruff", reason="ruff comes with the dev tools: bash scripts/setup.sh --dev")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
