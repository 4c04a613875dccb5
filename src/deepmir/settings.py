"""A stage's settings: one section of the workflow config, read against its schema.

The schemas (``workflow/schemas/*.schema.yaml``, shipped inside the package) are the only place
a default is written. A rule hands its stage the keys of its section that the command reads
as one JSON parameter (``--config-json``); :func:`read` fills in the rest from the schema and
checks it (types, ranges, unknown keys) before any work, with one line naming the key. A
command run by hand takes the same defaults, and its flags override single keys
(:func:`with_flags`).
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

import yaml

from deepmir.configkeys import unknown_key_message
from deepmir.errors import InputError

SCHEMA_DIR = Path(__file__).resolve().parent / "workflow" / "schemas"
NONE_GIVEN = object()     # a schema key without a default
# the schema file that defines each config section (a section is a top-level config key)
SECTION_FILE = {"anat": "anat", "qsm": "qsm", "swi": "qsm", "learn": "learn",
                "evaluate": "evaluate", "census": "census"}


@lru_cache(maxsize=None)
def schema_file(name: str) -> dict:
    """A schema file of the workflow, parsed (``name``: ``qsm`` for qsm.schema.yaml)."""
    return yaml.safe_load((SCHEMA_DIR / f"{name}.schema.yaml").read_text())


def schema(section: str) -> dict:
    """The JSON schema of one config section."""
    return schema_file(SECTION_FILE[section])["properties"][section]


def defaults_of(node: dict):
    """The default a schema node gives: an object's own ``default`` (a dict) completed by its
    properties' defaults, at any depth; ``NONE_GIVEN`` where the schema gives none."""
    if not (node.get("type") == "object" and "properties" in node):
        return copy.deepcopy(node["default"]) if "default" in node else NONE_GIVEN
    out = copy.deepcopy(node.get("default") or {})
    for key, sub in node["properties"].items():
        d = defaults_of(sub)
        if isinstance(d, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(d, out[key])
        elif d is not NONE_GIVEN and key not in out:
            out[key] = d
    return out


def top_level_defaults() -> dict:
    """The defaults of the config's top-level keys (config.schema.yaml)."""
    return {k: v for k, v in defaults_of({"type": "object", **schema_file("config")}).items()
            if not isinstance(v, dict)}


def defaults(section: str) -> dict:
    """Every default of a config section, nested as the config is."""
    return defaults_of(schema(section))


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _as_floats(value, node: dict):
    """Integers where the schema says ``number`` become floats (as a float flag would read
    them: 5 and 5.0 then print, and compute, the same)."""
    if isinstance(value, dict):
        props = node.get("properties") or {}
        return {k: _as_floats(v, props.get(k, {})) for k, v in value.items()}
    kinds = [node.get("type")] + [a.get("type") for a in node.get("anyOf", [])]
    if "number" in kinds and "integer" not in kinds and isinstance(value, int) \
            and not isinstance(value, bool):
        return float(value)
    return value


def _parse(given, section: str, source: str) -> dict:
    if isinstance(given, str):
        try:
            given = json.loads(given) if given.strip() else {}
        except ValueError as err:
            raise InputError(source, f"not a JSON object ({err})") from None
    if given is not None and not isinstance(given, dict):
        raise InputError(source, f"the {section} settings must be a JSON object")
    return given or {}


def read(section: str, given=None, source: str = "--config-json") -> dict:
    """A section's settings: ``given`` (a dict or its JSON text; None: none) over the schema's
    defaults, checked against the schema. A bad value or an unknown key is one
    :class:`InputError` naming ``source`` and the key."""
    import jsonschema

    node = schema(section)
    cfg = _merge(defaults(section), _parse(given, section, source))
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(node).iter_errors(cfg))
    if error is not None:
        path = [section, *map(str, error.absolute_path)]
        if error.validator == "additionalProperties":       # a typo: name the nearest known key
            known = error.schema.get("properties", {})
            bad = next(k for k in error.instance if k not in known)
            raise InputError(source, unknown_key_message(path, bad, known))
        raise InputError(source, f"config {'.'.join(path)}: {error.message}")
    return _as_floats(cfg, node)


def add_option(parser, section: str) -> None:
    """The ``--config-json`` option through which a rule hands a stage its config section."""
    parser.add_argument("--config-json", metavar="JSON", default=None,
                        help=f"the workflow config's `{section}` section as a JSON object; keys "
                             f"left out take their defaults (config/README.md)")


def with_flags(section: str, args, keys) -> dict:
    """The section from ``args.config_json``, with each of ``keys`` that a flag of the same
    name (dest) set overriding it; checked once, after the overrides."""
    return overridden(section, args.config_json,
                      {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None})


def overridden(section: str, given, over: dict) -> dict:
    """The section ``given`` (JSON text or dict) with ``over`` merged over it, then read."""
    return read(section, _merge(_parse(given, section, "--config-json"), over))
