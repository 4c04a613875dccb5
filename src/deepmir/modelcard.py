"""The model card (``model.json`` beside a trained ``best.pt``): read and validated against
``workflow/schemas/model_card.schema.yaml`` before anything of it is used. A card may come
from elsewhere: its experiment name becomes part of output paths and shell commands, so a
card that does not fit the schema is refused with one line."""
from __future__ import annotations

from pathlib import Path

import yaml

from deepmir import niio
from deepmir.errors import InputError

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "model_card.schema.yaml"


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
