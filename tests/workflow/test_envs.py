"""The conda envs of workflow/envs/ (`--sdm conda`) are complete: every rule with a shell or
script body names one, and it lists every third-party package that the rule's code imports.

The rules come from Snakemake's own parse of the workflow (a config that switches every
optional rule on); the code from the package source, read with `ast`: for a `deepmir
<subcommand>` shell line, deepmir.cli, the top level and `register` of every command module
(the parser imports and calls them all), the subcommand's function and the command-module
functions it uses, and every other deepmir module it imports, whole (lazy imports too).
`run:` bodies run inside Snakemake's own process, where a conda env does not apply: those rules
have none, and what they import must be a dependency of the package (pyproject.toml).
Nothing is installed here: conda channels cannot be reached from these machines."""
from __future__ import annotations

import ast
import copy
import dis
import functools
import importlib.metadata
import os
import re
import sys
import tomllib
import types
from pathlib import Path

import pytest
import yaml

import deepmir
from deepmir.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(deepmir.__file__).resolve().parent
ENVS = ROOT / "workflow" / "envs"
# import name -> distribution name, where they differ (else the installed packages' own map)
DISTRIBUTIONS = {"ants": "antspyx", "yaml": "pyyaml", "sklearn": "scikit-learn",
                 "skimage": "scikit-image", "PIL": "pillow"}
LOADERS = ("__import__", "import_module", "find_spec")   # called with a module name
CONFIG = {"output_dir": "results", "synth": {"n_participants": 3},
          "learn": {"experiments": {"swiqsmMulti": {"channels": ["SWI", "QSM"], "labels": "multiclass"}}}}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution(top: str) -> str:
    """The distribution that provides the top-level import name `top`."""
    if top in DISTRIBUTIONS:
        return DISTRIBUTIONS[top]
    return (_installed().get(top) or [top])[0]


@functools.cache
def _installed() -> dict:
    return importlib.metadata.packages_distributions()


def env_packages(path: Path) -> set[str]:
    """Normalised names of the conda and pip packages an env file lists (not its pip options)."""
    names = set()
    for dep in yaml.safe_load(path.read_text())["dependencies"]:
        for item in dep["pip"] if isinstance(dep, dict) else [dep]:
            if not item.startswith("-"):
                names.add(normalise(re.split(r"[<>=!~\[; ]", item.split("::")[-1])[0]))
    return names


def missing(imports: set[str], packages: set[str]) -> set[str]:
    """The third-party import names whose distribution is not in `packages`."""
    third = {m.split(".")[0] for m in imports} - set(sys.stdlib_module_names) - {"deepmir", "__future__"}
    return {t for t in third if normalise(distribution(t)) not in packages}


# ------------------------------------------------------------------ the package's source ------

def module_file(module: str) -> Path | None:
    """The source file of a deepmir module or package, None for a name that is neither."""
    path = PACKAGE.parent.joinpath(*module.split("."))
    for f in (path / "__init__.py", path.with_suffix(".py")):
        if f.is_file():
            return f
    return None


@functools.cache
def tree(module: str) -> ast.Module:
    return ast.parse(module_file(module).read_text())


def defs(module: str) -> dict:
    """Top-level functions and classes of a module by name."""
    return {n.name: n for n in tree(module).body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module
    package = module if module_file(module).name == "__init__.py" else module.rpartition(".")[0]
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base


@functools.cache
def _loader_helpers(module: str) -> frozenset[str]:
    """Functions of the module that hand their first argument to a loader (find_spec …)."""
    found = set()
    for name, node in defs(module).items():
        args = getattr(node, "args", None)
        first = args.args[0].arg if args and args.args else None
        if any(isinstance(c, ast.Call) and _callee(c) in LOADERS and c.args
               and isinstance(c.args[0], ast.Name) and c.args[0].id == first for c in ast.walk(node)):
            found.add(name)
    return frozenset(found)


def _callee(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def imports(module: str, node: ast.AST) -> set[str]:
    """Absolute names of the modules imported anywhere inside `node` of `module`: import
    statements (in functions too; `from deepmir import x` also names deepmir.x), and literal
    names given to __import__, import_module, find_spec or a helper of the module that loads."""
    out, helpers = set(), _loader_helpers(module) if module_file(module) else ()
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            base = _absolute(module, n)
            out.add(base)
            out |= {f"{base}.{a.name}" for a in n.names if module_file(f"{base}.{a.name}")}
        elif (isinstance(n, ast.Call) and _callee(n) in LOADERS + tuple(helpers)
              and n.args and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str)):
            out.add(n.args[0].value)
    return out


@functools.cache
def _module_imports(module: str) -> frozenset[str]:
    return frozenset(imports(module, tree(module)))


def closure(modules: set[str]) -> set[str]:
    """`modules` and every module the deepmir ones among them import, transitively, whole
    (lazy imports included; a submodule brings the __init__ of its packages)."""
    seen, todo = set(), list(modules)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        if m.split(".")[0] == "deepmir" and module_file(m):
            parts = m.split(".")
            todo += [".".join(parts[:k]) for k in range(1, len(parts))]
            todo += _module_imports(m)
    return seen


def _function_node(func) -> ast.AST:
    """The def (or lambda) of a subcommand's function in its module's source."""
    module = func.__module__
    if func.__name__ != "<lambda>":
        return defs(module)[func.__name__]
    line = func.__code__.co_firstlineno
    found = [ast.Expr(n) for n in ast.walk(tree(module)) if isinstance(n, ast.Lambda) and n.lineno == line]
    assert found, f"{module}:{line}: no lambda found for a subcommand's function"
    return ast.Module(body=found, type_ignores=[])


@functools.cache
def _from_imports(module: str) -> dict:
    """Local name -> (module, name) of every `from … import` in the module."""
    return {a.asname or a.name: (_absolute(module, n), a.name) for n in ast.walk(tree(module))
            if isinstance(n, ast.ImportFrom) for a in n.names}


def _used(module: str, node: ast.AST, commands: frozenset[str]) -> set[tuple[str, str]]:
    """(module, name) of the command-module functions and classes that `node` names: its
    module's own and those imported from another command module."""
    out = set()
    for name in {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}:
        m, real = (module, name) if name in defs(module) else _from_imports(module).get(name, (None, None))
        if m in commands and real in defs(m):
            out.add((m, real))
    return out


def _parser_setup(module: str) -> ast.Module:
    """What building the parser runs of a command module: its top level and `register`, less
    the subcommand functions they hand to argparse (`func=`)."""
    body = [n for n in tree(module).body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                 ast.ClassDef)) or n.name == "register"]
    setup = copy.deepcopy(ast.Module(body=body, type_ignores=[]))
    for n in ast.walk(setup):
        if isinstance(n, ast.keyword) and n.arg == "func":
            n.value = ast.Constant(None)
    return setup


@functools.cache
def command_imports(func, commands: frozenset[str]) -> set[str]:
    """Every module that `deepmir <subcommand>` whose function is `func` may import: deepmir.cli,
    the parser's setup of every command module, the function and the command-module functions
    it names (transitively), and the other deepmir modules these import, whole."""
    todo = [(m, _parser_setup(m)) for m in commands] + [(func.__module__, _function_node(func))]
    seen, modules = set(), {"deepmir.cli"}
    while todo:
        m, node = todo.pop()
        modules |= imports(m, node) - commands
        for m2, name in _used(m, node, commands) - seen:
            seen.add((m2, name))
            todo.append((m2, defs(m2)[name]))
    return closure(modules)


# ------------------------------------------------------------------ the workflow's rules -----

@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """The workflow as Snakemake parses it, every optional rule switched on (synthetic cohort,
    learning, the final model and its census, the QSM accuracy table)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, Quietness, ResourceSettings

    environ, cwd = dict(os.environ), os.getcwd()
    try:
        with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
            wf = api.workflow(ResourceSettings(), ConfigSettings(config=CONFIG, configfiles=[
                ROOT / "config" / "config.yaml"]), snakefile=ROOT / "workflow" / "Snakefile",
                workdir=tmp_path_factory.mktemp("envs"))
            yield wf._workflow
    finally:
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(cwd)


@pytest.fixture(scope="module")
def subcommands():
    """deepmir subcommand -> its function, from the real parser."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and a.dest == "command")
    return {name: p.get_default("func") for name, p in sub.choices.items()}


def rule_names_in_source() -> set[str]:
    """Every `rule`/`checkpoint` of the Snakefile and rule files (inside `if` blocks too)."""
    files = [ROOT / "workflow" / "Snakefile", *(ROOT / "workflow" / "rules").glob("*.smk")]
    text = "".join(f.read_text() for f in files)
    return set(re.findall(r"^\s*(?:rule|checkpoint)\s+(\w+)\s*:", text, re.M))


def shell_subcommands(shellcmd: str) -> list[str]:
    return re.findall(r"(?:^|[;&|(]\s*|\s)deepmir\s+([a-z][a-z0-9-]*)", shellcmd)


def run_imports(rule, workflow) -> set[str]:
    """Modules a `run:` body uses: what it imports and the modules of the workflow's globals it
    names (the rule files' top-level imports)."""
    codes, names, modules = [rule.run_func.__code__], set(), set()
    while codes:
        code = codes.pop()
        names |= set(code.co_names)
        codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
        modules |= {i.argval for i in dis.get_instructions(code) if i.opname == "IMPORT_NAME"}
    for name in names & set(workflow.globals):
        value = workflow.globals[name]
        module = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
        if isinstance(module, str):
            modules.add(module)
    return closure(modules)


def env_of(rule) -> Path:
    return (Path(rule.snakefile).parent / rule.conda_env).resolve()


def rule_problems(rule, workflow, subcommands, commands, project_deps) -> list[str]:
    """What is wrong with one rule's env: none where one is needed, a missing package, …"""
    if rule.norun:
        return []
    if rule.is_run:
        if rule.conda_env:
            return [f"{rule.name}: conda: has no effect on a run: body"]
        gone = missing(run_imports(rule, workflow), project_deps)
        return [f"{rule.name}: run: imports {sorted(gone)}, not dependencies of the package"] if gone else []
    if not rule.conda_env:
        return [f"{rule.name}: no conda: env"]
    if not env_of(rule).is_file():
        return [f"{rule.name}: {rule.conda_env}: no such file"]
    if rule.is_shell:
        called = shell_subcommands(rule.shellcmd)
        unknown = [c for c in called if c not in subcommands]
        if not called or unknown:
            return [f"{rule.name}: shell line runs no known deepmir subcommand ({unknown})"]
        used = set().union(*(command_imports(subcommands[c], commands) for c in called))
    elif rule.is_script:
        script = Path(rule.snakefile).parent / rule.script
        used = closure(imports("", ast.parse(script.read_text())))
    else:
        return [f"{rule.name}: a body this test cannot read"]
    gone = missing(used, env_packages(env_of(rule)))
    return [f"{rule.name}: {rule.conda_env} lacks {sorted(distribution(t) for t in gone)}"] if gone else []


@pytest.fixture(scope="module")
def project_deps():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {normalise(re.split(r"[<>=!~\[; ]", d)[0]) for d in deps}


def commands_of(subcommands) -> frozenset[str]:
    """The command modules: those of the subcommands' functions."""
    return frozenset(f.__module__ for f in subcommands.values())


# ------------------------------------------------------------------ tests --------------------

def test_the_parse_sees_every_rule(workflow):
    assert {r.name for r in workflow.rules} == rule_names_in_source()


def test_every_rule_has_a_complete_env(workflow, subcommands, project_deps):
    commands = commands_of(subcommands)
    problems = [p for r in workflow.rules
                for p in rule_problems(r, workflow, subcommands, commands, project_deps)]
    assert not problems, "\n".join(problems)


def header_rules(env: Path) -> set[str]:
    """The rules an env file's header names: `# rules: a, b` and its `#   c, d` lines."""
    lines = env.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("# rules:"))
    text = lines[start][len("# rules:"):]
    for ln in lines[start + 1:]:
        if not ln.startswith("#   "):
            break
        text += ln[1:]
    return set(re.findall(r"\w+", text))


def test_each_env_names_exactly_the_rules_that_use_it(workflow):
    used = {}
    for r in workflow.rules:
        if r.conda_env:
            used.setdefault(env_of(r), set()).add(r.name)
    assert set(used) <= {e.resolve() for e in ENVS.glob("*.yaml")}
    for env in ENVS.glob("*.yaml"):
        assert header_rules(env) == used.get(env.resolve(), set()), env.name


def test_each_env_installs_the_package_without_its_dependencies(workflow):
    """pip would pull every dependency of pyproject.toml into every env: the package goes in
    with --no-deps from the post-deploy script, at $DEEPMIR_SOURCE (set by the workflow)."""
    assert (Path(os.environ["DEEPMIR_SOURCE"]) / "pyproject.toml").is_file()
    for env in ENVS.glob("*.yaml"):
        script = env.with_suffix(".post-deploy.sh")
        assert script.is_file(), script
        assert re.search(r"pip install --no-deps -e \"\$DEEPMIR_SOURCE\"", script.read_text()), script


def test_a_missing_package_is_reported(tmp_path, workflow, subcommands, project_deps):
    """Negative check: the n4 rule (antspyx underneath) with an env that lacks antspyx."""
    env = tmp_path / "envs" / "light.yaml"
    env.parent.mkdir()
    env.write_text("dependencies:\n  - python=3.11\n  - pip:\n      - numpy\n      - scipy\n")
    rule = types.SimpleNamespace(name="anat_n4", norun=False, is_run=False, is_shell=True, is_script=False,
                                 conda_env="envs/light.yaml", snakefile=str(tmp_path / "x.smk"),
                                 shellcmd="deepmir n4 --input {input:q} > {log:q} 2>&1")
    problems = rule_problems(rule, workflow, subcommands, commands_of(subcommands), project_deps)
    assert len(problems) == 1 and "antspyx" in problems[0], problems
    assert "nibabel" in problems[0] and "pyyaml" in problems[0]      # every command's imports
    rule.conda_env = None
    assert rule_problems(rule, workflow, subcommands, commands_of(subcommands), project_deps) == [
        "anat_n4: no conda: env"]
