"""config/README.md documents every configuration key the schemas (and the synthetic cohort's
settings) define, and nothing else: the prose cannot drift from what the workflow accepts."""
import re
from pathlib import Path

import yaml

from deepmir.configkeys import schema_paths
from deepmir.synth.config import BASE

ROOT = Path(__file__).resolve().parents[2]
FREE_FORM = ("learn.experiments.",)       # a map of user-chosen names, documented as one key


def documented() -> set[str]:
    """Key names in the first column of config/README.md's tables; a name without a dot in a
    row of several takes the prefix of the row's first name; in the `synth` section names are
    relative to synth."""
    names, section = set(), ""
    for line in (ROOT / "config" / "README.md").read_text().splitlines():
        if line.startswith("## "):
            section = "synth." if "`synth`" in line else ""
        m = re.match(r"^\| (`[^|]+`) \|", line)
        if not m:
            continue
        row = re.findall(r"`([^`]+)`", m.group(1))
        prefix = row[0].rsplit(".", 1)[0] + "." if "." in row[0] else ""
        if row[0].endswith(".*"):     # `a.b.*`: the section's keys, named in the description
            rest = line[m.end():].split(" | ")[0]
            row = [k for k in re.findall(r"`([a-z_0-9]+)`", rest)]
        for k in row:
            names.add(section + (k if "." in k or not prefix else prefix + k))
    return names


def defined() -> set[str]:
    out = set()
    for f in sorted((ROOT / "workflow" / "schemas").glob("*.schema.yaml")):
        if f.name != "model_card.schema.yaml":
            out |= set(schema_paths(yaml.safe_load(f.read_text())))

    def walk(d, prefix):
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict) and k not in ("cmb_region_weights",):
                walk(v, prefix + k + ".")
    walk(BASE, "synth.")
    out.add("synth.scale")
    sections = {k.rsplit(".", 1)[0] for k in out if "." in k}
    return {k for k in out if k not in sections and not k.startswith(FREE_FORM)}


def test_every_key_documented_and_nothing_else():
    doc, keys = documented(), defined()
    assert not keys - doc, f"in the schemas but not in config/README.md: {sorted(keys - doc)}"
    assert not doc - keys, f"in config/README.md but in no schema: {sorted(doc - keys)}"
