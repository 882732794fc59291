"""The layout keeps its promises: the engine imports no task and no command, there is no import
cycle, no module reaches for another package's private names, no code outside tasks/ asks for a
task by name, every key's help and allowed values come from one place (README included), and a
new task is one module plus one registry line."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from conftest import write_recipe
from hftl.cli import main

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hftl"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every `import`/`from ... import` that runs (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")
           if not str(p.relative_to(PACKAGE)).startswith("metrics/") or p.name == "__init__.py" and p.parent.name == "metrics"}


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, names in _runtime_imports(path):
            if not target.startswith("hftl"):
                continue
            for name in names or [""]:  # `from hftl.commands import card` imports the module hftl.commands.card
                full = f"{target}.{name}" if f"{target}.{name}" in MODULES else target
                if full in MODULES and full != module:
                    graph[module].add(full)
    return graph


def test_no_import_cycles():
    graph, state, cycles = _edges(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


@pytest.mark.parametrize("package, allowed", [
    ("hftl.engine", ("hftl.engine", "hftl.errors")),
    ("hftl.data", ("hftl.data", "hftl.errors")),
    ("hftl.tasks", ("hftl.tasks", "hftl.engine", "hftl.data", "hftl.errors", "hftl.metrics")),
    ("hftl.forgetting", ("hftl.forgetting", "hftl.engine", "hftl.data", "hftl.errors")),
    ("hftl.advice", ("hftl.advice", "hftl.engine", "hftl.errors")),
])
def test_layers_import_only_downward(package, allowed):
    """The engine knows no task, command or recipe; tasks know no command; nothing below the top imports config."""
    wrong = {m: sorted(t for t in targets if not t.startswith(allowed))
             for m, targets in _edges().items() if m.startswith(package)}
    assert not {m: t for m, t in wrong.items() if t}, wrong


def test_no_private_names_across_packages():
    found = []
    for module, path in MODULES.items():
        package = module.rsplit(".", 1)[0]
        for target, names in _runtime_imports(path):
            if target.startswith("hftl") and not target.startswith(package):
                found += [f"{module}: from {target} import {n}" for n in names if n.startswith("_")]
    assert not found, found


def test_no_task_name_comparisons_outside_tasks():
    """Code outside tasks/ asks for a capability, never for a task's name."""
    from hftl.tasks import TASKS

    names, found = set(TASKS), []
    for module, path in MODULES.items():
        if module.startswith("hftl.tasks"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                consts = [c for o in operands for c in ([o] if isinstance(o, ast.Constant) else getattr(o, "elts", []))]
                if any(isinstance(c, ast.Constant) and c.value in names for c in consts):
                    found.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    assert not found, found


def test_help_shows_every_key_with_its_help_and_allowed_values(capsys):
    from hftl.config import ARG_CLASSES, choices

    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for cls in ARG_CLASSES:
        for f in dataclasses.fields(cls):
            if not f.init or f.name.startswith("_"):
                continue
            assert f"--{f.name}  (default" in out, f.name
            if cls.__module__.startswith("hftl"):
                assert f.metadata.get("help"), f"{f.name} has no help text"
                assert f.metadata["help"] in out
                allowed = choices(cls, f)
                if allowed:
                    assert f"one of: {', '.join(allowed)}" in out, f.name
    assert "one of: linear, cosine" in out  # TrainingArguments' enums too


def test_readme_key_table_is_generated_from_the_code():
    """`make readme-keys` rewrites it; this fails when README and config.py disagree."""
    from hftl.config import README_END, README_START, key_table

    readme = (ROOT / "README.md").read_text()
    assert README_START in readme and README_END in readme
    table = readme.split(README_START, 1)[1].split(README_END, 1)[0].strip()
    assert table == key_table().strip(), "README key table is stale: run `make readme-keys`"
    assert "| `strategy` | `full` | `feature_extraction`, `partial`, `full`, `lora` |" in table


# ---------------------------------------------------------------- a new task is one module + one registry line

from hftl.tasks.text_classification import TextClassification  # noqa: E402


class UppercaseText(TextClassification):
    """A new task as a user would add it: its own name, its own preprocessing, the rest inherited."""

    name = "uppercase-text-classification"

    def encode(self, config, raw, loaded):
        raw = raw.map(lambda row: {config.data.text_column: row[config.data.text_column].upper()})
        return super().encode(config, raw, loaded)


def test_a_new_task_is_one_class_and_one_registry_line(tiny_bert, sentiment_csv, tmp_path, monkeypatch):
    from hftl import tasks

    monkeypatch.setitem(tasks.TASKS, UppercaseText.name, "test_architecture:UppercaseText")
    tasks.get_task.cache_clear()
    try:
        out = tmp_path / "out"
        recipe = write_recipe(tmp_path / "r.yaml", task=UppercaseText.name, model_name_or_path=str(tiny_bert),
                              train_file=str(sentiment_csv / "train.csv"), output_dir=str(out), max_steps=2)
        assert main(["train", str(recipe)]) == 0
        assert (out / "model.safetensors").is_file() and (out / "plan.md").is_file()
        assert f"task: {UppercaseText.name}" in (out / "hftl_config.yaml").read_text()
        assert main(["advise", str(recipe), "--out", str(tmp_path / "advice")]) == 0  # capabilities carry over
    finally:
        tasks.get_task.cache_clear()
