"""docs/method.md is what `method.md §N` in the code, schemas, rules and docs points to: every
such reference must name a section the page has, and every config key the page names must be
one the workflow accepts (the page cannot drift from the schemas)."""
import re
from pathlib import Path

import yaml

from deepmir.configkeys import schema_paths
from deepmir.synth.config import BASE

ROOT = Path(__file__).resolve().parents[2]
METHOD = ROOT / "docs" / "method.md"
SEARCHED = ("src", "workflow", "config", "docs", "README.md")
SKIP_DIRS = {"__pycache__", ".snakemake", ".pytest_cache"}
# "method.md §3", "docs/method.md §3–4" (a range: every section in it)
REFERENCE = re.compile(r"method\.md\s*§\s*(\d+)(?:\s*[–-]\s*§?\s*(\d+))?")
# a backticked dotted name: `qsm.lambda`, `learn.patch.*`; file names end in an extension
DOTTED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*(?:\.(?:[A-Za-z0-9_]+|\*))+)`")
FILE_SUFFIXES = {"py", "md", "yaml", "yml", "json", "pt", "tsv", "nii", "gz", "png", "smk",
                 "txt", "html", "npz", "rst", "csv", "toml", "sh"}


def sections() -> set[int]:
    """The N of every `## §N Title` heading of docs/method.md."""
    return {int(n) for n in re.findall(r"^## §(\d+) \S", METHOD.read_text(), flags=re.M)}


def references() -> list[tuple[str, int, int]]:
    """(file:line, first, last) of every `method.md §N` reference outside docs/method.md."""
    files = []
    for name in SEARCHED:
        path = ROOT / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in sorted(path.rglob("*")) if p.is_file()
                      and not SKIP_DIRS & set(p.relative_to(ROOT).parts)]
    out = []
    for f in files:
        if f.resolve() == METHOD.resolve():
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for i, line in enumerate(text.splitlines(), start=1):
            for m in REFERENCE.finditer(line):
                first = int(m.group(1))
                out.append((f"{f.relative_to(ROOT)}:{i}", first, int(m.group(2) or first)))
    return out


def config_keys() -> tuple[set[str], set[str]]:
    """(every dotted key the schemas define, nested, plus the synthetic cohort's settings as
    config/README.md documents them; the top-level keys)."""
    keys, top = set(), set()
    for f in sorted((ROOT / "workflow" / "schemas").glob("*.schema.yaml")):
        if f.name == "model_card.schema.yaml":
            continue
        schema = yaml.safe_load(f.read_text())
        keys |= set(schema_paths(schema))
        top |= set((schema.get("properties") or {}).keys())

    def walk(d, prefix):
        for k, v in d.items():
            keys.add(prefix + k)
            if isinstance(v, dict) and k != "cmb_region_weights":
                walk(v, prefix + k + ".")
    walk(BASE, "synth.")
    return keys, top


def named_keys() -> set[str]:
    """The backticked dotted names of docs/method.md that are not file names."""
    names = set(DOTTED.findall(METHOD.read_text()))
    return {n for n in names if n.rsplit(".", 1)[-1].lower() not in FILE_SUFFIXES}


def test_the_page_has_numbered_sections():
    found = re.findall(r"^## §(\d+) ", METHOD.read_text(), flags=re.M)
    assert found, "docs/method.md has no '## §N Title' headings"
    numbers = [int(n) for n in found]
    assert numbers == list(range(1, len(numbers) + 1)), f"sections out of order: {numbers}"


def test_every_reference_has_its_section():
    refs = references()
    assert refs, "no `method.md §N` reference found: is the search broken?"
    have = sections()
    bad = [f"{where}: §{a}" + (f"–{b}" if b != a else "")
           for where, a, b in refs if a > b or not set(range(a, b + 1)) <= have]
    assert not bad, f"references to sections docs/method.md lacks (has {sorted(have)}): {bad}"


def test_every_config_key_named_exists():
    keys, top = config_keys()
    names = named_keys()
    assert names, "docs/method.md names no config key: is the pattern broken?"
    bad = []
    for name in sorted(names):
        base = name[:-2] if name.endswith(".*") else name
        if name.split(".", 1)[0] not in top:
            bad.append(f"{name} (no top-level key {name.split('.', 1)[0]!r})")
        elif base not in keys:
            bad.append(f"{name} (not in the schemas)")
    assert not bad, f"docs/method.md names config keys the workflow does not accept: {bad}"
