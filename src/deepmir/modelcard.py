"""The model card (``model.json`` beside a trained ``best.pt``): read and validated against
``workflow/schemas/model_card.schema.yaml`` before anything of it is used. A card may come
from elsewhere: its experiment name becomes part of output paths and shell commands, so a
card that does not fit the schema is refused with one line."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from deepmir.errors import InputError

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "model_card.schema.yaml"
MAX_BYTES = 10_000_000


def read_model_card(path) -> dict:
    """The card as a dict; :class:`InputError` (one line naming the file) when it is missing,
    not a regular file, not UTF-8 JSON, or does not fit the schema."""
    import jsonschema

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "missing model card" if not path.exists() and not path.is_symlink()
                         else "model card is not a regular file")
    if path.stat().st_size > MAX_BYTES:
        raise InputError(path, f"model card is larger than {MAX_BYTES} bytes")
    try:
        card = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise InputError(path, f"model card is not valid JSON ({_one_line(err)})") from None
    schema = yaml.safe_load(SCHEMA.read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(card))
    if error is not None:
        where = ".".join(str(k) for k in error.absolute_path) or "(top level)"
        raise InputError(path, f"model card {where}: {_one_line(error.message)}")
    return card


def _one_line(x) -> str:
    return " ".join(str(x).split())
