"""The package's map (docs/conventions.md, "Layout"): one stage package per rule file, each
with one thin ``cli.py``; base modules below them; no import cycle; no stage reaching into
another stage's command module; no module over 500 lines; the command layer at most 12 % of
the package; tests mirror the packages."""
import ast
from pathlib import Path

import pytest

import deepmir
from deepmir.cli import STAGES

PACKAGE = Path(deepmir.__file__).resolve().parent
ROOT = PACKAGE.parents[1]
LINKED = {"workflow", "config"}          # links to the top-level folders (wheel data)
# rule file of workflow/rules → the stage packages whose commands its rules run
RULE_FILES = {"inputs": ["inputs"], "anat": ["anat"], "qsm": ["qsm", "swi"], "learn": ["learn"],
              "evaluate": ["evaluate"], "census": ["census"], "synth": ["synth", "atlas"]}


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """{dotted module name: file} of every module of the package (not the linked folders)."""
    out = {}
    for p in root.rglob("*.py"):
        rel = p.relative_to(root.parent).with_suffix("")
        if set(rel.parts) & LINKED or "__pycache__" in rel.parts:
            continue
        parts = list(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[".".join(parts)] = p
    return out


def imports(name: str, path: Path, known) -> set[str]:
    """The package modules ``name`` imports, at any depth of its code (lazy imports too), and
    the packages above each (importing a.b.c runs a/__init__ and a/b/__init__)."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    out = set()
    for m in found:
        parts = m.split(".")
        out |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)} & set(known)
    out.discard(name)
    return {m for m in out if not name.startswith(m + ".")}   # a module's own packages run first anyway


def graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    mods = modules(root)
    return {m: imports(m, p, mods) for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def cli_crossings(g: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, command module) where a module imports another stage's ``cli``."""
    stage = lambda m: m.split(".")[1] if m.count(".") >= 1 else ""  # noqa: E731
    return sorted((m, d) for m, deps in g.items() for d in deps
                  if d.endswith(".cli") and d != "deepmir.cli" and stage(d) != stage(m) and m != "deepmir.cli")


def test_no_import_cycle_and_no_stage_imports_another_stages_cli():
    g = graph()
    assert not cycles(g), cycles(g)
    assert not cli_crossings(g), cli_crossings(g)


def test_the_checks_find_a_cycle_and_a_cli_crossing(tmp_path):
    """The two checks above on a hand-built package that has both."""
    pkg = tmp_path / "deepmir"
    for rel, text in {"__init__.py": "", "a/__init__.py": "", "a/cli.py": "",
                      "b/__init__.py": "", "b/x.py": "def f():\n    from deepmir.b import y\n",
                      "b/y.py": "from deepmir.b import x\nfrom deepmir.a.cli import main\n"}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    g = graph(pkg)
    assert cycles(g) == [["deepmir.b.x", "deepmir.b.y"]]
    assert cli_crossings(g) == [("deepmir.b.y", "deepmir.a.cli")]


def lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def command_layer(mods: dict[str, Path]) -> list[Path]:
    return [p for m, p in mods.items() if m.endswith(".cli") or ".commands" in m]


def test_module_sizes_and_the_command_layer():
    mods = modules()
    big = {m: lines(p) for m, p in mods.items() if lines(p) > 500}
    assert not big, f"modules over 500 lines: {big}"
    total = sum(lines(p) for p in mods.values())
    cli = sum(lines(p) for p in command_layer(mods))
    assert cli <= 0.12 * total, f"command layer {cli} of {total} lines ({100 * cli / total:.1f} %)"


def test_one_stage_package_per_rule_file_with_its_cli_and_tests():
    rule_files = {p.stem for p in (ROOT / "workflow" / "rules").glob("*.smk")} - {"common", "provenance"}
    assert rule_files == set(RULE_FILES)
    assert sorted(s for v in RULE_FILES.values() for s in v) == sorted(STAGES)
    for stage in STAGES:
        assert (PACKAGE / stage / "cli.py").is_file(), stage
        assert (PACKAGE / stage / "__init__.py").read_text().startswith('"""'), stage
        assert list((ROOT / "tests" / stage).glob("test_*.py")), f"no tests/{stage}/"
    top = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert top == set(STAGES) | {"core", "workflow"}, top


@pytest.mark.parametrize("stage", STAGES)
def test_every_rule_command_is_its_stages(stage):
    """A subcommand that a rule of the stage's rule file runs is registered by that stage's
    cli (or, for commands a stage borrows, by the package named in the map)."""
    import re

    from deepmir.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    rule_file = next(f for f, pkgs in RULE_FILES.items() if stage in pkgs)
    text = (ROOT / "workflow" / "rules" / f"{rule_file}.smk").read_text()
    used = set(re.findall(r'"deepmir ([a-z0-9-]+)', text))
    owners = {c: sub.choices[c].get_default("func").__module__.split(".")[1] for c in used}
    borrowed = {"train": "learn", "predict": "learn", "bench-table": "census"}   # census.smk
    assert all(owners[c] in RULE_FILES[rule_file] or borrowed.get(c) == owners[c] for c in used), owners
