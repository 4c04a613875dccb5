"""The model card (``model.json`` beside a trained ``best.pt``): read and validated against
``workflow/schemas/model_card.schema.yaml`` before anything of it is used. A card may come
from elsewhere: its experiment name becomes part of output paths and shell commands, so a
card that does not fit the schema is refused with one line."""
from __future__ import annotations

import yaml

from deepmir import niio, settings
from deepmir.errors import InputError

SCHEMA = settings.SCHEMA_DIR / "model_card.schema.yaml"


def read_model_card(path) -> dict:
    """The card as a dict; :class:`InputError` (one line naming the file) when it is missing,
    not a regular file, not UTF-8 JSON, or does not fit the schema."""
    import jsonschema

    card = niio.read_json(path, "model card")
    schema = yaml.safe_load(SCHEMA.read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(card))
    if error is not None:
        where = ".".join(str(k) for k in error.absolute_path) or "(top level)"
        raise InputError(path, f"model card {where}: {error.message}")
    return card


# ------------------------------------------------------------------ provenance of the channels
RESOURCE_KEYS = ("device", "gpu", "threads", "mem_mb", "runtime")     # where, not what
CHANNEL_STAGES = {"SWI": ("anat", "swi"), "QSM": ("anat", "qsm"), "T2": ("anat",)}


def _without_resources(d):
    if not isinstance(d, dict):
        return d
    return {k: _without_resources(v) for k, v in d.items() if k not in RESOURCE_KEYS}


def channel_settings(config: dict, channels) -> dict:
    """The config sections that made the model's input ``channels`` (the anatomical stage's
    brain mask and registration, the SWI and QSM stages), without the keys that only say where
    and with what resources a stage ran: what a model's card records and what applying it
    must match."""
    stages = sorted({s for c in channels for s in CHANNEL_STAGES[c]})
    return {s: _without_resources(config.get(s, {})) for s in stages}


def settings_mismatch(card_settings: dict, current: dict, prefix=()) -> str | None:
    """The first key whose value differs between a card's channel settings and the current
    ones, as 'qsm.lambda: the model's 100, this config's auto'; None when they agree. A key
    that either side lacks counts as a difference."""
    for k in sorted(set(card_settings) | set(current)):
        a, b = card_settings.get(k, "(absent)"), current.get(k, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            found = settings_mismatch(a, b, (*prefix, k))
            if found:
                return found
        elif a != b:
            return f"{'.'.join([*prefix, k])}: the model's {a!r}, this config's {b!r}"
    return None
