"""``deepmir synth``: the synthetic cohort (digital head phantoms with known truth) as a BIDS
dataset. A pure function of the configuration (the ``synth`` section of the workflow config,
given as a YAML/JSON file or string) and its seed."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from deepmir.errors import InputError


def register(sub):
    p = sub.add_parser("synth", help="generate the synthetic BIDS cohort", description=__doc__)
    p.add_argument("bids_dir", help="output BIDS dataset root")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", help="YAML/JSON file with the synth settings "
                                      "(a whole workflow config is accepted: its 'synth' key is used)")
    src.add_argument("--config-json", help="the synth settings as a JSON string")
    p.add_argument("--participant", action="append",
                   help="write only this participant (sub-XXX; repeatable); default: all")
    p.add_argument("--dataset-files", action="store_true",
                   help="write only the dataset descriptions (raw and derivatives) and README")
    p.add_argument("--participants-tsv", action="store_true", help="write only participants.tsv")
    p.add_argument("--annotations", default="annotations")
    p.add_argument("--head-model-cache", help="npz cache of the MNI head model (built if absent)")
    p.set_defaults(func=run)


def load_settings(args) -> dict:
    from deepmir.synth.config import settings
    if args.config_json:
        user = json.loads(args.config_json)
    elif args.config:
        path = Path(args.config)
        if not path.exists():
            raise InputError(path, "config file does not exist")
        user = yaml.safe_load(path.read_text()) or {}
        user = user.get("synth", user)
    else:
        user = {}
    return settings(user)


def run(args) -> int:
    from deepmir.atlas import head as anatomy
    from deepmir.synth import cohort, write
    cfg = load_settings(args)
    root = Path(args.bids_dir)
    ids = cohort.participant_ids(cfg["n_participants"])
    parts_only = args.dataset_files or args.participants_tsv
    wanted = args.participant or ([] if parts_only else ids)
    # a participant is a pure function of (settings, seed, index): --participant may name one
    # beyond n_participants (the workflow leaves n_participants out of each participant's job,
    # so that growing the cohort does not re-run the existing participants)
    index = {}
    for pid in wanted:
        m = re.fullmatch(r"sub-(\d{3,})", pid)
        if pid not in ids and not (m and int(m.group(1)) >= 1):
            raise InputError(pid, "not a participant id of a synthetic cohort (sub-001, sub-002, ...)")
        index[pid] = ids.index(pid) if pid in ids else int(m.group(1)) - 1
    if args.dataset_files or not (args.participant or parts_only):
        write.write_description(root, args.annotations)
    if args.participants_tsv or not (args.participant or parts_only):
        write.write_participants_tsv(root, cfg)
    if wanted or args.head_model_cache:
        anatomy.head_model(args.head_model_cache)
    from deepmir.synth.phantom import LesionPlacementError
    for pid in wanted:
        try:
            write.write_participant(root, cfg, index[pid], args.annotations)
        except LesionPlacementError as err:
            raise InputError(pid, f"synth: {err}") from None
        print(f"wrote {pid}", flush=True)
    return 0
