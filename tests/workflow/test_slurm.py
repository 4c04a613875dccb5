"""The workflow on a real one-node SLURM cluster, started by the test itself.

As root on Debian (apt-get), the module fixture installs Debian's slurmctld/slurmd/munge
(scripts/slurm/install.sh), starts a private one-node cluster on localhost
(scripts/slurm/start.sh) and stops exactly the daemons it started when the module is done
(scripts/slurm/stop.sh; the teardown checks their pids are gone). Everywhere else the module is
skipped, with the reason.

- test_workflow_through_sbatch: tests/workflow/slurm_config.yaml (two tiny synthetic participants, every
  stage the Snakefile includes) through `snakemake --profile profiles/slurm`; every job must have
  gone through sbatch (the SLURM job ids Snakemake reports are COMPLETED records of SLURM's
  jobcomp/filetxt log, with this run's job name).
- test_slurm_outputs_equal_local_run: the inputs stage (NIfTI arrays and affines, JSON) and its
  montage of the SLURM run equal those of a local run of the same configuration.
- test_preempted_training_resumes: a training job (the default patch learner) cancelled with
  `scancel` after its first checkpoints is submitted again by Snakemake (retries) and resumes
  at its last checkpointed iteration k, i.e. its log goes on from iteration k.
- test_rerun_*: after the complete SLURM run, a changed parameter, `-R` and `--until` select
  only the dependent jobs (local dry runs in its working folder), and a run stopped after
  one stage continues with what is left.

The test only shortens the plugin's status polling (and, with no slurmdbd on the test cluster,
queries the job states with squeue; see the profile's comments); everything else comes from
profiles/slurm/config.yaml. The SLURM job ids are printed to the terminal (also without -s).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "slurm"
PROFILE = REPO / "profiles" / "slurm"
CONFIG = Path(__file__).resolve().parent / "slurm_config.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

# test-only settings on top of the profile: poll quickly; without an accounting database only
# squeue sees jobs finish (the trap recorded in docs/cluster.md)
FAST_POLLING = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
                "--latency-wait", "10",
                # group jobs ask for one CPU (their jobs run one after another): the test node may
                # have only one or two
                "--cores", "1"]


def _why_skip() -> str | None:
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root to install and start SLURM (run as root on Debian, as CI does)"
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        return "needs apt-get (Debian) to install SLURM"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_why_skip() is not None, reason=f"real SLURM: {_why_skip()}")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _report(request, text: str):
    """Print to the terminal even when pytest captures output (CI runs without -s)."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print("\n" + text, flush=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf"), "OMP_NUM_THREADS": "1"}

    def pids(self) -> dict[str, int]:
        path = self.root / "pids"
        return {n: int(p) for n, p in (line.split() for line in path.read_text().split("\n") if line.strip())}

    def records(self) -> list[dict]:
        """Finished jobs, from jobcomp/filetxt (one `Key=Value ...` line per job)."""
        path = self.root / "jobcomp.txt"
        if not path.exists():
            return []
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in path.read_text().splitlines() if line.strip()]

    def wait_recorded(self, job_ids, timeout=30) -> dict[str, dict]:
        """jobcomp records of these job ids (slurmctld writes them just after the job ends)."""
        t0 = time.time()
        while True:
            recs = {r["JobId"]: r for r in self.records() if r.get("JobId") in set(job_ids)}
            if len(recs) == len(set(job_ids)) or time.time() - t0 > timeout:
                return recs
            time.sleep(0.5)

    def squeue(self) -> list[dict]:
        out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T|%k"], env=self.env,
                             capture_output=True, text=True, check=True).stdout
        return [dict(zip(("id", "state", "comment"), line.split("|", 2))) for line in out.splitlines()]


ETC_CONF = Path("/etc/slurm/slurm.conf")


def _plant_killed_cluster_link(tmp_path_factory) -> bool:
    """Where no SLURM is configured, leave /etc/slurm/slurm.conf as a test run killed before its
    teardown leaves it (a link to its slurm.conf, its daemons gone): start.sh must replace it."""
    if ETC_CONF.exists() or ETC_CONF.is_symlink():
        return False
    old = tmp_path_factory.mktemp("slurm_killed")
    (old / "slurm.conf").write_text("# one-node test cluster written by scripts/slurm/start.sh\n")
    gone = subprocess.Popen(["true"])
    gone.wait()
    (old / "pids").write_text(f"munged {gone.pid}\nslurmctld {gone.pid}\n")
    ETC_CONF.parent.mkdir(parents=True, exist_ok=True)
    ETC_CONF.symlink_to(old / "slurm.conf")
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pytest.fail("snakemake-executor-plugin-slurm is not installed (it is a dependency of deepmir: "
                    "run scripts/install.sh)")
    inst = subprocess.run(["bash", str(SCRIPTS / "install.sh")], capture_output=True, text=True)
    assert inst.returncode == 0, f"installing SLURM failed:\n{inst.stdout}\n{inst.stderr}"
    root = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURMCTLD_PORT": str(_free_port()), "SLURMD_PORT": str(_free_port())}
    env.setdefault("SLURM_MEM_MB", str(min(16000, int(
        int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1]) / 1024 * 0.9))))
    planted = _plant_killed_cluster_link(tmp_path_factory)
    start = subprocess.run(["bash", str(SCRIPTS / "start.sh"), str(root)], env=env, capture_output=True, text=True)
    c = Cluster(root)
    started = c.pids() if (root / "pids").exists() else {}
    try:
        assert start.returncode == 0, f"starting SLURM failed:\n{start.stdout}\n{start.stderr}"
        if planted:  # start.sh replaced the link a killed earlier test cluster had left
            assert "no longer runs" in start.stderr and ETC_CONF.resolve() == (root / "slurm.conf").resolve()
        _report(request, f"[slurm] {start.stdout.strip()}; started {started}")
        yield c
    finally:
        stop = subprocess.run(["bash", str(SCRIPTS / "stop.sh"), str(root)], capture_output=True, text=True)
        survivors = {n: p for n, p in started.items() if _alive(p)}
        _report(request, f"[slurm] {stop.stdout.strip()}")
        assert stop.returncode == 0 and not survivors, f"daemons still running: {survivors}\n{stop.stderr}"


def _workdir(path: Path, config: dict | None = None) -> Path:
    """A working folder with config/config.yaml (the Snakefile's configfile) = the test config."""
    (path / "config").mkdir(parents=True, exist_ok=True)
    text = CONFIG.read_text()
    if config is not None:
        import yaml
        text = yaml.safe_dump(config)
    (path / "config" / "config.yaml").write_text(text)
    return path


def _snakemake(wd: Path, *args, env=None, timeout=600, snakefile=REPO / "workflow" / "Snakefile"):
    cmd = [*SNAKEMAKE, "-s", str(snakefile), "-d", str(wd), *map(str, args)]
    proc = subprocess.run(cmd, env=env or {**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=timeout)
    (wd / "snakemake.out").write_text(proc.stdout + proc.stderr)
    return proc


def _submitted(output: str) -> dict[str, str]:
    """SLURM job id -> Snakemake job id, from Snakemake's log."""
    return {m[1]: m[0] for m in re.findall(r"Job (\S+) has been submitted with SLURM jobid (\d+)", output)}


def _run_id(output: str) -> str:
    m = re.search(r"SLURM run ID: (\S+)", output)
    assert m, "no SLURM run ID in Snakemake's log"
    return m[1]


def _job_stats(output: str) -> dict[str, int]:
    """The `Job stats` table of a (dry) run: rule -> number of jobs."""
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal", output, re.S)
    return {} if not m else {r: int(n) for r, n in (line.split() for line in m[1].splitlines() if line.strip())}


# ------------------------------------------------------------------- end to end -------------

# Every stage the Snakefile includes runs, except the final report: with two participants there
# is no learning stage (no folds), and `deepmir summary` does not yet cope with an empty one
# (EmptyDataError); drop this once it does.
E2E = ["--omit-from", "report"]

# the local reference run makes these files (the inputs stage with them), and these folders
# are compared (the SLURM run goes through every stage the Snakefile includes)
LOCAL_TARGETS = [f"results/report/inputs/{pid}_montage.png" for pid in ("sub-001", "sub-002")]
COMPARED = ("results/inputs", "results/report/inputs")

@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory, request):
    wd = _workdir(tmp_path_factory.mktemp("slurm_run"))
    t0 = time.time()
    proc = _snakemake(wd, "--profile", PROFILE, *FAST_POLLING, *E2E, env=cluster.env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake --profile profiles/slurm failed:\n{out[-6000:]}"
    _report(request, f"[slurm] workflow ran on SLURM in {time.time() - t0:.0f} s")
    return wd, out


@pytest.fixture(scope="module")
def local_run(slurm_run, tmp_path_factory):
    """The same configuration run locally up to the inputs stage (and its montage), on a copy of
    the synthetic cohort the SLURM run made (saves simulating it twice; the copy keeps the
    times, so only the later stages run)."""
    src, _ = slurm_run
    wd = _workdir(tmp_path_factory.mktemp("local_run"))
    for sub in ("results/synthetic_bids", "results/atlas"):
        shutil.copytree(src / sub, wd / sub, copy_function=shutil.copy2)
    proc = _snakemake(wd, *LOCAL_TARGETS, "--profile", REPO / "profiles" / "local", "--cores", "2")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"local run failed:\n{out[-6000:]}"
    assert "synth_participant" not in _job_stats(out), "the local run simulated the cohort again"
    return wd, out


def test_workflow_through_sbatch(cluster, slurm_run, request):
    wd, out = slurm_run
    submitted = _submitted(out)
    run_id = _run_id(out)
    assert submitted, f"no job was submitted with sbatch:\n{out[-4000:]}"
    recs = cluster.wait_recorded(submitted)
    missing = sorted(set(submitted) - set(recs), key=int)
    assert not missing, f"SLURM has no record of jobs {missing}"
    for jid, rec in recs.items():
        assert rec["JobState"] == "COMPLETED", f"SLURM job {jid}: {rec}"
        assert rec["Name"] == run_id, f"SLURM job {jid} is not of this run: {rec}"
    # grouping: each participant's preprocessing chain went in one submission
    n_jobs = sum(n for rule, n in _job_stats(out).items() if rule != "all")
    assert len(submitted) < n_jobs, f"{len(submitted)} submissions for {n_jobs} jobs: no grouping"
    for pid in ("sub-001", "sub-002"):
        for name in ("part-mag_MEGRE.nii.gz", "part-phase_MEGRE.nii.gz", "MEGRE.json"):
            assert (wd / "results" / "inputs" / pid / f"{pid}_{name}").is_file()
        assert (wd / "results" / "report" / "inputs" / f"{pid}_montage.png").is_file()
    lines = [f"  SLURM job {jid}: snakemake job {submitted[jid]}, {recs[jid]['JobState']}, "
             f"{recs[jid].get('StartTime', '?')} .. {recs[jid].get('EndTime', '?')}, {recs[jid].get('Tres', '')}"
             for jid in sorted(recs, key=int)]
    _report(request, f"[slurm] run {run_id}: {len(recs)} SLURM jobs, all COMPLETED (jobcomp records):\n"
            + "\n".join(lines))
    request.node.user_properties.append(("slurm_job_ids", sorted(recs, key=int)))


def _compare(a: Path, b: Path, exact: bool) -> str | None:
    """None when the two files hold the same content, else what differs."""
    name = a.name
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib
        ia, ib = nib.load(a), nib.load(b)
        if not np.allclose(ia.affine, ib.affine, atol=1e-6):
            return "affines differ"
        da, db = np.asanyarray(ia.dataobj), np.asanyarray(ib.dataobj)
        if da.shape != db.shape or da.dtype != db.dtype:
            return f"{da.shape} {da.dtype} vs {db.shape} {db.dtype}"
        same = np.array_equal(da, db, equal_nan=True) if exact else np.allclose(da, db, rtol=1e-4, atol=1e-6, equal_nan=True)
        return None if same else f"arrays differ (max |diff| {np.nanmax(np.abs(da.astype(float) - db)):.3g})"
    if name.endswith(".json"):
        return None if json.loads(a.read_text()) == json.loads(b.read_text()) else "JSON differs"
    if name.endswith(".png"):
        import matplotlib.image as mpimg
        return None if np.array_equal(mpimg.imread(a), mpimg.imread(b)) else "image pixels differ"
    if name.endswith((".pt", ".npz", ".html")):
        return None  # binary containers with timestamps/pickles: their content is checked by their own tests
    return None if a.read_bytes() == b.read_bytes() else "bytes differ"


def test_slurm_outputs_equal_local_run(slurm_run, local_run):
    (s, _), (l, _) = slurm_run, local_run
    files = sorted(p.relative_to(s) for folder in COMPARED for p in (s / folder).rglob("*") if p.is_file())
    compared, problems = 0, []
    for rel in files:
        other = l / rel
        if not other.exists():
            problems.append(f"{rel}: not made by the local run")
            continue
        why = _compare(s / rel, other, exact=rel.parts[1] == "inputs")
        compared += 1
        if why:
            problems.append(f"{rel}: {why}")
    assert compared >= 8, f"only {compared} files compared"
    assert not problems, "SLURM and local outputs differ:\n" + "\n".join(problems)
    extra = sorted(str(p.relative_to(l)) for folder in COMPARED for p in (l / folder).rglob("*")
                   if p.is_file() and not (s / p.relative_to(l)).exists())
    assert not extra, f"only the local run made {extra}"


# ------------------------------------------------------------------- re-running -------------

def _included(stage: str) -> bool:
    """Whether the Snakefile includes workflow/rules/<stage>.smk."""
    return re.search(rf'^include:\s*"rules/{stage}\.smk"', (REPO / "workflow" / "Snakefile").read_text(), re.M) is not None


def test_rerun_changed_parameter_selects_dependents(slurm_run):
    wd, _ = slurm_run
    done = _snakemake(wd, "-n", "--cores", "1", *E2E)
    assert "Nothing to be done" in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]
    # a parameter of the inputs stage: its jobs and everything downstream, nothing upstream
    changed = _job_stats(_snakemake(wd, "-n", "--cores", "1", *E2E, "--config", "min_echoes=3").stdout)
    assert changed.get("inputs") == 2 and changed.get("montage") == 2, changed
    assert not {"synth_dataset", "synth_participant"} & set(changed), changed
    if _included("qsm"):
        # a QSM parameter: QSM and what depends on it; neither the inputs nor the anat stage
        reqsm = _job_stats(_snakemake(wd, "-n", "--cores", "1", *E2E, "--config", "qsm={lambda: 500}").stdout)
        assert reqsm.get("qsm") == 2, reqsm
        assert not {"synth_participant", "inputs", "anat_n4", "anat_register", "anat_brainmask"} & set(reqsm), reqsm


def test_rerun_forcerun_and_until(slurm_run):
    wd, _ = slurm_run
    forced = _job_stats(_snakemake(wd, "-n", "--cores", "1", *E2E, "-R", "inputs").stdout)
    assert forced.get("inputs") == 2 and forced.get("montage") == 2 and "synth_participant" not in forced, forced
    until = _job_stats(_snakemake(wd, "-n", "--cores", "1", "-R", "inputs", "--until", "inputs").stdout)
    assert until == {"inputs": 2}, until


def test_rerun_continues_where_it_stopped(slurm_run, tmp_path):
    """A run stopped after the inputs stage (--until) continues with what is left."""
    src, _ = slurm_run
    wd = _workdir(tmp_path / "wd")
    for sub in ("results/synthetic_bids", "results/atlas"):
        shutil.copytree(src / sub, wd / sub, copy_function=shutil.copy2)
    first = _snakemake(wd, "--cores", "2", "--until", "inputs", "--config", "participants=[sub-001]")
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    rest = _job_stats(_snakemake(wd, "-n", "--cores", "1", *E2E, "--config", "participants=[sub-001]").stdout)
    assert "inputs" not in rest and rest.get("montage") == 1, rest


# ------------------------------------------------------------------- preemption -------------

LEARN_CONFIG = {
    "output_dir": "results",
    "synth": {"scale": "demo", "seed": 3, "n_participants": 3},
    "learn": {"experiments": {"swiqsmUnion": {"channels": ["SWI", "QSM"], "labels": "union"}},
              "threads": 1, "device": "cpu", "train_mem_mb": 1000, "train_runtime": 10,
              "patch": {"iterations": 300, "batch_size": 8, "patch_size": 16, "depth": 3, "base_width": 4,
                        "checkpoint_every": 10, "log_every": 10, "val_every": 50, "mine_every": 20,
                        "mine_slices": 2}},
}
ITERATIONS = LEARN_CONFIG["learn"]["patch"]["iterations"]


def _learn_snakefile(wd: Path) -> tuple[Path, bool]:
    """The repository's Snakefile when it includes the learning stage; otherwise (while that
    stage is not wired in yet) a copy of it in wd that also includes workflow/rules/learn.smk."""
    text = (REPO / "workflow" / "Snakefile").read_text()
    if _included("learn"):
        return REPO / "workflow" / "Snakefile", True
    lines = [re.sub(r'^include:\s*"(rules/[^"]+)"', rf'include: "{REPO}/workflow/\1"', ln) for ln in text.splitlines()]
    last = max(i for i, ln in enumerate(lines) if ln.startswith("include:"))
    lines.insert(last + 1, f'include: "{REPO}/workflow/rules/learn.smk"')
    path = wd / "Snakefile"
    path.write_text("\n".join(lines) + "\n")
    return path, False


def _fake_stack(wd: Path, pid: str, seed: int):
    """A small labelled training stack (the learning stage's input), made with `deepmir stack`
    from random images, so that the test needs no QSM/SWI stages."""
    from deepmir import niio
    shape, aff = (32, 32, 6), np.diag([2.0, 2.0, 3.0, 1.0])
    rng = np.random.default_rng(seed)
    swi, qsm, dseg = rng.normal(1, 0.05, shape), rng.normal(0, 0.01, shape), np.zeros(shape, np.uint8)
    for k in range(shape[2]):
        for _ in range(2):
            i, j = rng.integers(6, 26, 2)
            swi[i - 1:i + 2, j - 1:j + 2, k], qsm[i - 1:i + 2, j - 1:j + 2, k], dseg[i - 1:i + 2, j - 1:j + 2, k] = 0.2, 0.3, 1
    mask = np.zeros(shape, np.uint8)
    mask[3:29, 3:29] = 1
    raw = wd / "raw"
    raw.mkdir(exist_ok=True)
    p = {n: niio.save(raw / f"{pid}_{n}.nii.gz", a, aff, dtype=np.uint8 if n in ("mask", "dseg") else np.float32)
         for n, a in (("swi", swi), ("qsm", qsm), ("mask", mask), ("dseg", dseg))}
    from deepmir.cli import main as deepmir
    out = wd / "results" / "stacks" / pid / f"{pid}_stack.npz"
    assert deepmir(["stack", "--channel", f"SWI={p['swi']}", "--channel", f"QSM={p['qsm']}", "--mask", str(p["mask"]),
                    "--dseg", str(p["dseg"]), "--out", str(out), "--pad-to", "32"]) == 0


def test_preempted_training_resumes(cluster, tmp_path, request):
    if not (REPO / "workflow" / "rules" / "learn.smk").exists():
        pytest.skip("no learning stage (workflow/rules/learn.smk) yet")
    wd = _workdir(tmp_path / "wd", LEARN_CONFIG)
    snakefile, wired = _learn_snakefile(wd)
    if not wired:
        _report(request, "[slurm] NOTE: the Snakefile does not include workflow/rules/learn.smk yet; "
                         "the preemption test uses a copy of the Snakefile that does")
    pids = ("sub-001", "sub-002", "sub-003")
    for n, pid in enumerate(pids):
        _fake_stack(wd, pid, n)
    fold = "results/learn/swiqsmUnion/fold-sub-001"
    # the fold's split too (made here, in this process: one SLURM job fewer to wait for)
    from deepmir.cli import main as deepmir
    (wd / fold).mkdir(parents=True)
    assert deepmir(["folds", "--participants", *pids, "--seed", "0", "--val-fraction", "0.25",
                    "--fold", "sub-001", "--fold-out", str(wd / fold / "split.json")]) == 0
    log = wd / "results" / "logs" / "learn" / "swiqsmUnion" / "fold-sub-001_train.log"
    cmd = [*SNAKEMAKE, f"{fold}/best.pt", "-s", str(snakefile), "-d", str(wd), "--profile", str(PROFILE),
           *FAST_POLLING, "--allowed-rules", "learn_split", "learn_train",
           "--set-resources", "learn_train:gpu=0"]  # the test cluster has no GPU
    with open(wd / "snakemake.out", "w") as sm_out:
        proc = subprocess.Popen(cmd, env=cluster.env, stdout=sm_out, stderr=subprocess.STDOUT)
        try:
            # wait for the training job to write its first checkpoint, then cancel it like a preemption
            t0, seen, victim = time.time(), [], None
            while time.time() - t0 < 300 and proc.poll() is None:
                seen = [int(e) for e in re.findall(r"^iter (\d+)/", log.read_text(), re.M)] if log.exists() else []
                if seen and (wd / fold / "last.pt").exists():
                    victim = next((j["id"] for j in cluster.squeue()
                                   if j["comment"].startswith("rule_learn_train") and j["state"] == "RUNNING"), None)
                    if victim:
                        subprocess.run(["scancel", victim], env=cluster.env, check=True)
                        break
                time.sleep(0.2)
            first_log = log.read_text() if log.exists() else ""
            assert victim, f"never saw the training job checkpoint while running:\n{first_log[-2000:]}"
            assert max(seen) < ITERATIONS, "training finished before it could be cancelled"
            rc = proc.wait(timeout=400)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=60)
    out = (wd / "snakemake.out").read_text()
    assert rc == 0, f"the workflow did not recover from the cancelled job:\n{out[-5000:]}"
    recs = cluster.wait_recorded([victim])
    assert recs.get(victim, {}).get("JobState") == "CANCELLED", recs
    queue = {j["id"]: j for j in cluster.squeue()}  # finished jobs stay listed for MinJobAge (300 s)
    train_jobs = sorted((j for j in _submitted(out) if queue.get(j, {}).get("comment", "").startswith("rule_learn_train")),
                        key=int)
    assert victim in train_jobs and len(train_jobs) >= 2, (victim, train_jobs)
    resumed = log.read_text()
    m = re.search(r"resuming from \S*last\.pt at iteration (\d+)", resumed)
    assert m, f"the retried job did not resume from the checkpoint:\n{resumed[-2000:]}"
    k = int(m[1])
    after = [int(e) for e in re.findall(r"^iter (\d+)/", resumed[m.end():], re.M)]
    assert k >= max(seen) - 10 and after and after[0] == k + 10, (k, seen, after)
    assert after[-1] == ITERATIONS
    table = (wd / fold / "log.tsv").read_text().splitlines()
    assert [int(r.split("\t")[0]) for r in table[1:]] == list(range(10, ITERATIONS + 1, 10))
    assert (wd / fold / "best.pt").is_file()
    final = cluster.wait_recorded([j for j in _submitted(out) if j != victim])
    _report(request, f"[slurm] preemption: training job {victim} cancelled after iteration {max(seen)} "
                     f"(state {recs[victim]['JobState']}); retried as SLURM job(s) "
                     f"{[j for j in train_jobs if j != victim]}, "
                     f"which resumed at iteration {k} and ran iterations {k + 1}..{after[-1]}; "
                     f"jobcomp states {[(j, r['JobState']) for j, r in sorted(final.items(), key=lambda x: int(x[0]))]}")
