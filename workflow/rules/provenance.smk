# The output folder as a BIDS derivative dataset: dataset_description.json (GeneratedBy with
# deepmir's version, SourceDatasets) and the resolved configuration the run used.
import yaml as _yaml

from deepmir import niio as _niio

from deepmir.derivatives import dataset_description as _dataset_description


rule provenance:
    """dataset_description.json and deepmir_config.yaml at the top of output_dir (rewritten
    when the configuration changes)."""
    input:
        source=f"{BIDS}/dataset_description.json",
    output:
        description=f"{OUT}/dataset_description.json",
        config=f"{OUT}/deepmir_config.yaml",
    params:
        config=config,
        bids=BIDS,
        out=OUT,
    run:
        source = _niio.read_json(input.source, "dataset_description.json")
        _niio.write_json(output.description, _dataset_description(source, params.bids, params.out))
        _niio.write_text(output.config, "# the resolved configuration of this run (defaults filled in)\n"
                         + _yaml.safe_dump(dict(params.config), sort_keys=False))


ALL_TARGETS += [rules.provenance.output.description, rules.provenance.output.config]
