"""Unknown configuration keys: a typo such as ``--config bids-dir=/data`` must stop the run
with one line naming the key and the nearest known one, not run the synthetic demo.

Plain functions on dicts; the workflow passes the keys its schemas define.
"""
from __future__ import annotations

import difflib


def nearest(key, known) -> str | None:
    """The known key closest to ``key`` (case, '-' and '_' ignored first), or None."""
    known = [str(k) for k in known]

    def norm(s):
        return str(s).lower().replace("-", "_")
    same = [k for k in known if norm(k) == norm(key)]
    if same:
        return same[0]
    close = difflib.get_close_matches(norm(key), [norm(k) for k in known], n=1, cutoff=0.6)
    return next((k for k in known if norm(k) == close[0]), None) if close else None


def unknown_key_message(path, key, known, below=()) -> str:
    """'config a.b.key: unknown key (did you mean x?)'; ``known`` lists the keys allowed there,
    ``below`` the dotted names of keys further down (a key given one level too high is found
    there)."""
    name = ".".join([*map(str, path), str(key)])
    hint = nearest(key, known)
    if hint is None:
        hint = next((b for b in below if b.rsplit(".", 1)[-1] == str(key)), None)
        hint = hint and ".".join([*map(str, path), hint])
    return f"config {name}: unknown key" + (f" (did you mean {hint}?)" if hint else
                                             f" (known: {', '.join(sorted(map(str, known)))})")


def schema_paths(schema: dict, prefix=()) -> list[str]:
    """Dotted names of every key a JSON schema object defines, at any depth."""
    out = []
    for k, sub in ((schema or {}).get("properties") or {}).items():
        out.append(".".join([*prefix, k]))
        if isinstance(sub, dict):
            out += schema_paths(sub, (*prefix, k))
    return out


def unknown_keys(data, known, path=()) -> list[str]:
    """A message per key of ``data`` that ``known`` does not have. ``known`` is a nested dict of
    the allowed keys: a dict value is checked below that key too, any other value (None)
    allows anything below it."""
    if not isinstance(data, dict) or not isinstance(known, dict):
        return []
    out = []
    for k, v in data.items():
        if k not in known:
            out.append(unknown_key_message(path, k, known))
        elif isinstance(known[k], dict):
            out += unknown_keys(v, known[k], (*path, k))
    return out


def schema_keys(schemas) -> dict:
    """The top-level keys that JSON schemas define (the union over ``schemas``), each mapped to
    None: a section's own keys are checked by its schema (``additionalProperties: false``)."""
    out = {}
    for s in schemas:
        out.update({k: None for k in (s.get("properties") or {})})
    return out
