"""Leave-one-out folds (preprint §2.4): each participant is the test set once; the others are
split at random 75 % / 25 % into training and validation (24 participants → 17 / 6 / 1).

The split of a fold is drawn from a generator seeded with ``(seed, hash of the test
participant)``, over the *sorted* remaining participants: it depends neither on the order of
the input list nor on the fold's position in it.
"""
from __future__ import annotations

import hashlib
import re

import numpy as np

from deepmir import niio, settings
from deepmir.errors import InputError

# the schema's learn.val_fraction (the folds) and census.val_fraction (the final model's split)
_D = settings.read("learn")["val_fraction"], settings.read("census")["val_fraction"]


def _refuse(pids, val_fraction: float) -> None:
    """ValueError unless the participants can make leave-one-out folds with a validation set."""
    if len(set(pids)) != len(pids):
        dup = sorted({p for p in pids if pids.count(p) > 1})
        raise ValueError(f"participants listed more than once: {dup}")
    if len(pids) < 3:
        raise ValueError("leave-one-out with a validation set needs at least 3 participants")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")


def _participant_key(pid: str) -> int:
    return int.from_bytes(hashlib.sha256(pid.encode("utf-8")).digest()[:8], "little")


def loo_folds(participants_with_labels: list[str], seed: int, val_fraction: float = _D[0]) -> list[dict]:
    """One fold per participant, sorted by the test participant:
    ``dict(test=[p], train=[...], val=[...])`` (train and val sorted).
    The validation set has ``round(val_fraction · (n − 1))`` participants (at least 1)."""
    pids = [str(p) for p in participants_with_labels]
    _refuse(pids, val_fraction)
    pids = sorted(pids)
    folds = []
    for test in pids:
        others = [p for p in pids if p != test]
        n_val = min(max(1, int(round(val_fraction * len(others)))), len(others) - 1)
        rng = np.random.default_rng([int(seed), _participant_key(test)])
        perm = rng.permutation(len(others))
        val = sorted(others[i] for i in perm[:n_val])
        train = sorted(others[i] for i in perm[n_val:])
        folds.append({"test": [test], "train": train, "val": val})
    return folds


def nnunet_splits(folds: list[dict]) -> list[dict]:
    """The folds as nnU-Net's ``splits_final.json``: ``[{"train": [...], "val": [...]}, ...]``
    with nnU-Net's meaning: ``val`` is the fold's held-out set, on which nnU-Net validates the
    trained model, i.e. our test participant; nnU-Net trains for a fixed number of epochs
    without a selection set, so ``train`` is our training and validation participants."""
    return [{"train": sorted([*f["train"], *f["val"]]), "val": list(f["test"])} for f in folds]


def train_val_split(participants: list[str], seed: int, val_fraction: float = _D[1]) -> dict:
    """The final model's split: every participant in training or validation (for epoch
    selection), drawn as a fold's split is (order-independent, seeded)."""
    pids = sorted(str(p) for p in participants)
    if len(pids) < 2:
        raise ValueError("a training/validation split needs at least 2 participants")
    n_val = min(max(1, int(round(val_fraction * len(pids)))), len(pids) - 1)
    perm = np.random.default_rng([int(seed), _participant_key("final")]).permutation(len(pids))
    return {"train": sorted(pids[i] for i in perm[n_val:]), "val": sorted(pids[i] for i in perm[:n_val])}


def read_participants(path) -> list[str]:
    """Participant ids of a TSV with a participant_id column (BIDS participants.tsv), or of
    one id per line."""
    lines = [ln.split("\t") for ln in niio.read_text(path, "participants file").splitlines() if ln.strip()]
    if not lines:
        raise InputError(path, "empty participants file")
    if "participant_id" in lines[0]:
        col = lines[0].index("participant_id")
        return [row[col] for row in lines[1:] if len(row) > col]
    return [row[0] for row in lines]


def check_participants(pids, val_fraction: float, where) -> None:
    """A one-line InputError (naming ``where``) unless the participants can make leave-one-out
    folds (:func:`loo_folds`'s conditions) with ids usable as file names."""
    try:
        _refuse(pids, val_fraction)
    except ValueError as err:
        raise InputError(where, str(err)) from None
    bad = [p for p in pids if not re.fullmatch(r"[A-Za-z0-9_.\-]+", p)]
    if bad:
        raise InputError(where, f"participant ids unusable as file names: {bad}")
