# The output folder as a BIDS derivative dataset: dataset_description.json (GeneratedBy with
# deepmir's version, SourceDatasets), the resolved configuration the run used, and each
# participant's maps (and, with a census, the applied model's labels and lesion table) under
# sub-X/[ses-Y/]anat/, copied from the working folders with sidecars (Sources, SpatialReference).
import yaml as _yaml

from deepmir import derivatives as _deriv
from deepmir import niio as _niio


rule provenance:
    """dataset_description.json, .bidsignore and deepmir_config.yaml at the top of output_dir
    (rewritten when the configuration changes)."""
    input:
        source=f"{BIDS}/dataset_description.json",
    output:
        description=f"{OUT}/dataset_description.json",
        bidsignore=f"{OUT}/.bidsignore",
        config=f"{OUT}/deepmir_config.yaml",
    params:
        config=config,
        bids=BIDS,
        out=OUT,
    run:
        source = _niio.read_json(input.source, "dataset_description.json")
        _niio.write_json(output.description, _deriv.dataset_description(source, params.bids, params.out))
        _niio.write_text(output.bidsignore, _deriv.BIDSIGNORE)
        _niio.write_text(output.config, "# the resolved configuration of this run (defaults filled in)\n"
                         + _yaml.safe_dump(dict(params.config), sort_keys=False))


def derivative(pid, name):
    """{output_dir}/sub-X/[ses-Y/]anat/{pid}_{name}: every published per-participant path."""
    return f"{OUT}/{_deriv.bids_path(pid, name)}"


def _raw_images(pid):
    """The participant's raw images inside the input dataset (the published maps' Sources);
    the first is the shortest-echo MEGRE magnitude, whose grid space-MEGRE is."""
    return [f for f in raw_inputs(pid) if f.endswith((".nii", ".nii.gz"))
            and not os.path.relpath(f, BIDS).startswith(("derivatives", ".."))]


def _checked_pid(wc):
    """The rule's participant, when the folder in the asked-for path is its folder."""
    if f"{wc.folder}/anat" != _deriv.participant_folder(wc.pid):
        raise ValueError(f"{wc.folder}/anat is not the folder of {wc.pid} ({_deriv.participant_folder(wc.pid)})")
    return wc.pid


_FOLDER = r"sub-[A-Za-z0-9]+(/ses-[A-Za-z0-9]+)?"
_WORKING_SIDECARS = {"space-MEGRE_Chimap.nii.gz": "qsm", "space-MEGRE_desc-brain_mask.nii.gz": "anat"}


rule derivatives_participant:
    """A participant's maps (χ, R2*, local field, SWI, minIP, brain mask) in its BIDS folder,
    each with a JSON sidecar: the working sidecar's content (λ, settings, mask method), Units,
    Sources and SpatialReference as BIDS URIs into the input dataset."""
    input:
        maps=lambda wc: [out(stage, _checked_pid(wc), name) for name, (stage, _) in _deriv.PARTICIPANT_MAPS.items()],
        sidecars=lambda wc: [out(stage, wc.pid, _niio.sidecar_path(name)) for name, stage in _WORKING_SIDECARS.items()],
    output:
        [f"{OUT}/{{folder}}/anat/{{pid}}_{name}" for n in _deriv.PARTICIPANT_MAPS
         for name in (n, _niio.sidecar_path(n))],
    wildcard_constraints:
        folder=_FOLDER,
    params:
        sources=lambda wc: [_deriv.bids_uri(f, BIDS) for f in _raw_images(wc.pid)],
        working=lambda wc: {name: out(stage, wc.pid, _niio.sidecar_path(name)) for name, stage in _WORKING_SIDECARS.items()},
    run:
        with _niio.together():
            for src, name, dst in zip(input.maps, _deriv.PARTICIPANT_MAPS, output[::2]):
                working = params.working.get(name)
                _niio.copy(src, dst)
                _niio.write_json(_niio.sidecar_path(dst), _deriv.image_metadata(
                    _niio.read_json(working) if working else None, params.sources, params.sources[0],
                    _deriv.PARTICIPANT_MAPS[name][1]))


localrules: provenance, derivatives_participant     # file copies: no cluster job
# (run: rules have no conda: env: Snakemake runs their Python in its own process)

PARTICIPANT_TARGETS += [derivative(p, n) for p in PIDS for n in _deriv.PARTICIPANT_MAPS]
ALL_TARGETS += [rules.provenance.output.description, rules.provenance.output.bidsignore,
                rules.provenance.output.config]


if CENSUS_APPLIED:
    _CENSUS_NAMES = {"dseg": f"space-MEGRE_desc-{CENSUS_EXP}_dseg.nii.gz",
                     "probseg": f"space-MEGRE_desc-{CENSUS_EXP}_probseg.nii.gz",
                     "census": f"space-MEGRE_desc-{CENSUS_EXP}_census.tsv"}

    rule derivatives_census:
        """The applied model's labels (with the dseg.tsv look-up), probabilities and the lesion
        table of one participant, in its BIDS folder (the group level: the model is trained on
        the cohort)."""
        input:
            dseg=lambda wc: out("apply", _checked_pid(wc), _CENSUS_NAMES["dseg"]),
            probseg=lambda wc: out("apply", wc.pid, _CENSUS_NAMES["probseg"]),
            census=lambda wc: census_path(wc.pid),
        output:
            **{k: f"{OUT}/{{folder}}/anat/{{pid}}_{n}" for k, n in _CENSUS_NAMES.items()},
            labels=f"{OUT}/{{folder}}/anat/{{pid}}_{_CENSUS_NAMES['dseg'].replace('.nii.gz', '.tsv')}",
            dseg_json=f"{OUT}/{{folder}}/anat/{{pid}}_{_niio.sidecar_path(_CENSUS_NAMES['dseg'])}",
            probseg_json=f"{OUT}/{{folder}}/anat/{{pid}}_{_niio.sidecar_path(_CENSUS_NAMES['probseg'])}",
        wildcard_constraints:
            folder=_FOLDER,
        params:
            sources=lambda wc: [_deriv.bids_uri(f, BIDS) for f in _raw_images(wc.pid)],
            model={"Experiment": CENSUS_EXP, "Model": FINAL_MODEL},
        run:
            with _niio.together():
                for key in ("dseg", "probseg", "census"):
                    _niio.copy(input[key], output[key])
                _niio.write_text(output.labels, _deriv.DSEG_LABELS)
                for key in ("dseg", "probseg"):
                    _niio.write_json(output[f"{key}_json"], _deriv.image_metadata(
                        params.model, params.sources, params.sources[0], None))

    localrules: derivatives_census

    ALL_TARGETS += [derivative(p, n) for p in CENSUS_PIDS for n in _CENSUS_NAMES.values()]
