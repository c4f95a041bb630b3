"""The workflow on a real Slurm (slurm/local-cluster.sh: Debian's slurmctld, slurmd and munge on
localhost): `sbatch slurm/slurm.sbatch` runs the cycle inside the allocation with `srun` job steps
for the MPI analysis; a run that would outlast its time limit stops and resubmits itself and ends
equal to an unbroken one; platform=slurm from outside an allocation submits a Parsl block.
Skipped, with the reason, where the machine has no root or no apt (CI has both)."""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scoreda.io import read_state

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "slurm" / "local-cluster.sh"
SMALL = [
    "model.N=32",
    "members=6",
    "burn_in=1",
    "model.spinup_cycles=20",
    "model.member_spacing_cycles=2",
    "filter.n_steps=30",
    "progress=false",
    "filter.ranks=2",  # the analysis is an MPI job: an srun job step of 2 ranks
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    check = subprocess.run(["bash", str(CLUSTER), "check"], capture_output=True, text=True)
    if check.returncode != 0:
        pytest.skip(f"no local Slurm: {check.stdout.strip() or check.stderr.strip()}")
    up = subprocess.run(["bash", str(CLUSTER), "up"], capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, up.stderr[-2000:]
    conf = up.stdout.strip().split("SLURM_CONF=")[-1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # not inside a job
    env |= {"SLURM_CONF": conf, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    yield env
    subprocess.run(["bash", str(CLUSTER), "down"], capture_output=True)


def sbatch(env, out_dir: Path, *args) -> str:
    cmd = ["sbatch", "--parsable", f"--output={out_dir}/job-%j.out", *args]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def wait_for(path: Path, timeout: float, env: dict | None = None, out_dir: Path | None = None) -> None:
    """Until ``path`` exists; with ``env`` fail as soon as the queue is empty without it (the job
    ended), with the tail of its output from ``out_dir``, instead of waiting out the timeout."""
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline:
        time.sleep(1)
        if env is not None and not path.exists():
            q = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
            if q.returncode == 0 and not q.stdout.strip():
                time.sleep(2)  # a file written just before the job left the queue
                logs = "".join(f.read_text()[-1500:] for f in (out_dir or path.parent).glob("job-*.out"))
                assert path.exists(), f"{path}: the job ended without it: {logs}"
    assert path.exists(), f"{path} did not appear within {timeout} s"


def wait_idle(env, timeout=300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        q = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
        if not q.stdout.strip():
            return
        time.sleep(1)
    raise AssertionError("Slurm queue did not drain")


def rows(run_dir: Path) -> list[dict]:
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


@pytest.fixture(scope="module")
def straight(slurm, tmp_path_factory):
    """`sbatch slurm/slurm.sbatch ... cycles=3` once, to completion."""
    base = tmp_path_factory.mktemp("sbatch")
    job = sbatch(slurm, base, "--time=10", "slurm/slurm.sbatch", f"run_dir={base}/run", "cycles=3", *SMALL)
    wait_for(base / "run" / "summary.json", 600, slurm, base)
    wait_idle(slurm)
    return base, job


def test_sbatch_runs_the_cycle_with_srun_mpi_stages(straight):
    base, job = straight
    log = (base / f"job-{job}.out").read_text()
    assert f"scoreda: job {job} on 1 node(s)" in log and "analysis RMSE" in log
    r = rows(base / "run")
    assert [int(x["cycle"]) for x in r] == [1, 2, 3]
    assert all(float(x["rmse_analysis"]) < float(x["rmse_forecast"]) for x in r)
    for k in (1, 2, 3):  # each analysis was one srun job step of 2 ranks inside the allocation
        step = (base / "run" / "logs" / f"analysis-{k:06d}.err").read_text()
        assert "srun --ntasks=2 --nodes=1 --ntasks-per-node=2" in step or k > 1
        assert (base / "run" / "cycles" / f"{k:06d}" / "analysis.h5").is_file()


def test_sbatch_runs_the_letkf_on_two_ranks_of_tiles(slurm, tmp_path):
    """``filter=letkf filter.ranks=2`` under sbatch: each analysis an srun job step of 2 ranks, each
    rank one tile of grid rows; the analyses improve on the forecasts."""
    small = [o for o in SMALL if not o.startswith("filter.n_steps")]  # an EnSF key
    job = sbatch(slurm, tmp_path, "--time=10", "slurm/slurm.sbatch", f"run_dir={tmp_path}/run", "cycles=2",
                 "filter=letkf", *small)  # fmt: skip
    wait_for(tmp_path / "run" / "summary.json", 600, slurm, tmp_path)
    wait_idle(slurm)
    assert "analysis RMSE" in (tmp_path / f"job-{job}.out").read_text()
    r = rows(tmp_path / "run")
    assert [int(x["cycle"]) for x in r] == [1, 2]
    assert all(float(x["rmse_analysis"]) < float(x["rmse_forecast"]) for x in r)
    assert "srun --ntasks=2" in (tmp_path / "run" / "logs" / "analysis-000001.err").read_text()


def test_walltime_stop_resubmits_and_ends_equal_to_an_unbroken_run(slurm, straight, tmp_path):
    """A 3-minute job where a cycle counts as 160 s (platform.min_cycle_s) starts cycles only in its
    first ~20 s: fewer than the 16 asked (on an idle 2-core machine 10 small cycles fitted in 25 s;
    a cycle takes ≈ 2.5 s). It stops with exit 75 and
    resubmits itself (afterany) until the run is complete; the chain ends with the numbers of one
    unbroken job."""
    ref, _ = straight
    run_dir = tmp_path / "run"
    args = ["--time=3", "slurm/slurm.sbatch", f"run_dir={run_dir}", "cycles=16", *SMALL]
    first = sbatch(slurm, tmp_path, *args, "platform.stop_margin_s=0", "platform.min_cycle_s=160")
    wait_for(run_dir / "summary.json", 1200, slurm, tmp_path)
    wait_idle(slurm)
    logs = sorted(tmp_path.glob("job-*.out"))
    assert len(logs) >= 2, "the run finished in one job: nothing was resubmitted"
    text = (tmp_path / f"job-{first}.out").read_text()
    assert "walltime: cycle" in text and "resubmitting slurm/slurm.sbatch" in text
    assert "resubmission 1" in "".join(p.read_text() for p in logs)
    assert rows(run_dir)[:3] == rows(ref / "run")
    final, _ = read_state(run_dir / "cycles" / "000003" / "analysis.h5")
    expect, _ = read_state(ref / "run" / "cycles" / "000003" / "analysis.h5")
    assert np.array_equal(final, expect)


def test_platform_slurm_submits_a_parsl_block_from_outside(slurm, straight, tmp_path):
    """platform=slurm outside an allocation: Parsl's SlurmProvider submits one block; the stages run
    in it (the MPI analysis as a job step of that block)."""
    ref, _ = straight
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "workflows" / "cycle.py"),
        "platform=slurm",
        "platform.address=127.0.0.1",
        "platform.walltime=00:10:00",
        f"run_dir={run_dir}",
        "cycles=2",
        *SMALL,
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=slurm, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    submits = [
        f for f in (run_dir / "runinfo").rglob("parsl.slurm.block-*") if not f.suffix.startswith(".std")
    ]
    assert submits and "#SBATCH --exclusive" in submits[0].read_text()  # the block Parsl submitted
    assert list((run_dir / "runinfo").rglob("block-0/*/manager.log"))  # its workers ran the stages
    assert "srun --ntasks=2" in (run_dir / "logs" / "analysis-000001.err").read_text()
    assert rows(run_dir) == rows(ref / "run")[:2]
    wait_idle(slurm)


def test_srun_launches_the_trainer_on_two_ranks(slurm, tmp_path):
    """DeepSpeed ZeRO-2 and DDP under `srun --ntasks=2`: rank, world and rendezvous from SLURM_*
    (the path of `parallel.launcher=srun` on Frontier), the same losses for both strategies."""
    out = tmp_path / "out.json"
    cases = ROOT / "tests" / "trainer_cases.py"
    cmd = ["srun", "--ntasks=2", "--time=5", sys.executable, str(cases), "--strategy", "ddp,zero2"]
    cmd += ["--steps", "5", "--out", str(out)]
    env = slurm | {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TRAINER_CASES_TMP": str(tmp_path)}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and out.is_file(), (p.stdout + p.stderr)[-3000:]
    got = json.loads(out.read_text())
    assert (got["launcher"], got["world_size"]) == ("srun", 2)
    ddp, zero2 = (got["strategies"][s]["losses"] for s in ("ddp", "zero2"))
    assert zero2 == pytest.approx(ddp, abs=1e-6) and zero2[-1] < zero2[0]


def test_sbatch_trains_the_score_network_with_srun(slurm, tmp_path):
    """`SCOREDA_WORKFLOW=workflows/train_score.py sbatch slurm/slurm.sbatch …`: the score network's
    training (issue 21) in one allocation, its DeepSpeed ZeRO-2 step launched by srun (the path of
    slurm/frontier.sbatch with scorenet=sda_qg_gpu); a weights file that loads, with the window's
    spacing recorded."""
    from scoreda.learned.weights import load_scorenet

    out = tmp_path / "sc"
    over = ["model.N=16", "model.spinup_cycles=20", "pretrain.trajectories=4", "pretrain.held_out=1"]
    over += ["pretrain.length=20", "scorenet.hidden=[8,16]", "scorenet.blocks=[1,1]", "scorenet.steps=10"]
    over += ["scorenet.batch_size=8", "scorenet.window=1", "parallel=zero2", "parallel.ranks=1"]
    env = slurm | {"SCOREDA_WORKFLOW": "workflows/train_score.py", "DS_ACCELERATOR": "cpu"}
    job = sbatch(env, tmp_path, "--time=10", "slurm/slurm.sbatch", f"scorenet.out_dir={out}", *over)
    wait_for(out / "report.json", 600, slurm, tmp_path)
    wait_idle(slurm)
    log = (tmp_path / f"job-{job}.out").read_text()
    assert f"scoreda: job {job} on 1 node(s)" in log, log[-2000:]
    assert any(ln.strip().startswith("srun ") and "train_score train" in ln for ln in log.splitlines()), log
    net, _, _, _, meta = load_scorenet(out / "weights.pt")
    assert net.inp.in_channels == 3 * 2 and meta["steps"] == 10 and meta["every_hours"] == 12.0
