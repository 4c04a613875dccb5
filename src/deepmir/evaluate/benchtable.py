"""The per-job Snakemake benchmarks (``benchmarks/<stage>/…/<unit>.tsv``) as one table: seconds,
CPU seconds and peak memory per stage, summed per participant and per fold."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

PID = re.compile(r"(sub-[A-Za-z0-9]+(?:_ses-[A-Za-z0-9]+)?)")


def collect(root) -> pd.DataFrame:
    """One row per benchmark file: stage, participant, fold, s, cpu_time, max_rss (MB)."""
    rows = []
    for path in sorted(Path(root).rglob("*.tsv")):
        try:
            df = pd.read_csv(path, sep="\t")
        except (pd.errors.EmptyDataError, pd.errors.ParserError):
            continue
        if df.empty or "s" not in df:
            continue
        rel = path.relative_to(root).with_suffix("")
        m = PID.search(str(rel))
        fold = re.search(r"fold-(sub-[A-Za-z0-9]+)", str(rel))
        stage = "/".join(p for p in rel.parts[:-1] if not p.startswith("fold-")) or rel.parts[0]
        stage += "" if m else f"/{rel.name}"
        if fold:
            stage += "/" + rel.name.split("_")[-1]
        last = df.iloc[-1]
        rows.append(dict(stage=stage, participant=m.group(1) if m else "", fold=fold.group(1) if fold else "",
                         s=float(last["s"]), cpu_s=float(last.get("cpu_time", float("nan"))),
                         max_rss_mb=float(last.get("max_rss", float("nan")))))
    return pd.DataFrame(rows, columns=["stage", "participant", "fold", "s", "cpu_s", "max_rss_mb"])


def summaries(jobs: pd.DataFrame) -> dict:
    """Per stage (mean/max over jobs), per participant (preprocessing, no folds), per fold."""
    per_stage = jobs.groupby("stage").agg(jobs=("s", "size"), mean_s=("s", "mean"), max_s=("s", "max"),
                                          mean_cpu_s=("cpu_s", "mean"), max_rss_mb=("max_rss_mb", "max"))
    prep = jobs[(jobs.participant != "") & (jobs.fold == "")]
    per_pid = prep.groupby("participant").agg(jobs=("s", "size"), s=("s", "sum"), cpu_s=("cpu_s", "sum"),
                                              max_rss_mb=("max_rss_mb", "max"))
    folds = jobs[jobs.fold != ""].copy()
    folds["experiment"] = folds.stage.str.split("/").str[1]
    per_fold = folds.groupby(["experiment", "fold"]).agg(jobs=("s", "size"), s=("s", "sum"),
                                                         cpu_s=("cpu_s", "sum"), max_rss_mb=("max_rss_mb", "max"))
    return {"stage": per_stage.reset_index(), "participant": per_pid.reset_index(), "fold": per_fold.reset_index()}


def markdown(jobs: pd.DataFrame) -> str:
    """The report's benchmark page: the per-stage, per-participant and per-fold summaries."""
    from deepmir.evaluate.tables import to_markdown

    parts = ["# Time and memory per stage", "",
             "From Snakemake's `benchmark:` files of this run (wall seconds, CPU seconds, peak RSS in "
             "MB); a job run again overwrites its file.", ""]
    for name, df in summaries(jobs).items():
        parts += [to_markdown(df.round(1), f"per {name}").strip(), ""]
    return "\n".join(parts)
