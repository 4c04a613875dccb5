"""The benchmark table: per-job files summed per participant and per fold."""
from deepmir.evaluate import benchtable

HEAD = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write(root, rel, s, rss, cpu):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(HEAD + f"{s}\t0:00:0{s}\t{rss}\t0\t0\t0\t0\t0\t0\t{cpu}\n")


def test_sums_per_participant_and_fold(tmp_path):
    write(tmp_path, "qsm/sub-001.tsv", 10, 900, 8)
    write(tmp_path, "anat/n4_T1w/sub-001.tsv", 5, 400, 4)
    write(tmp_path, "qsm/sub-002.tsv", 12, 950, 9)
    write(tmp_path, "learn/swiCmb/fold-sub-001_train.tsv", 30, 600, 25)
    write(tmp_path, "learn/swiCmb/fold-sub-001_predict.tsv", 3, 500, 2)
    jobs = benchtable.collect(tmp_path)
    assert len(jobs) == 5
    t = benchtable.summaries(jobs)
    pid = t["participant"].set_index("participant")
    assert pid.loc["sub-001", "s"] == 15 and pid.loc["sub-001", "max_rss_mb"] == 900
    assert pid.loc["sub-002", "cpu_s"] == 9
    fold = t["fold"].iloc[0]
    assert (fold.experiment, fold.fold, fold.s, fold.jobs) == ("swiCmb", "sub-001", 33, 2)
    stage = t["stage"].set_index("stage")
    assert stage.loc["qsm", "jobs"] == 2 and stage.loc["learn/swiCmb/train", "max_s"] == 30
