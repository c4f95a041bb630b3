"""Platforms without a cluster: the Slurm/Frontier configs, srun job-step commands, the walltime gate,
Parsl retries of a killed MPI stage, and the scaling sweeps (run here on 1 and 2 ranks)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from scoreda.config import validate
from scoreda.platform import end_time_seconds
from scoreda.stages.common import WalltimeStop, walltime_gate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflows"))
from conftest import CYCLE  # noqa: E402
from platforms import launch_command, mpi_command, provider_mode  # noqa: E402

SMALL = [
    "model.N=32",
    "members=6",
    "burn_in=1",
    "model.spinup_cycles=20",
    "model.member_spacing_cycles=2",
    "filter.n_steps=30",
    "progress=false",
]


def cfg_of(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return validate(compose("config", overrides=list(overrides)))


def env():
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}


def test_frontier_config_binds_one_gcd_a_rank_and_needs_only_the_account():
    c = cfg_of("platform=frontier", "filter.ranks=12", "forecaster=physics")
    assert c.platform.name == "frontier" and c.parallel.launcher == "srun" and c.device == "cuda"
    assert c.platform.ranks_per_node == 8 and c.platform.account is None and c.platform.python is None
    cmd = mpi_command(c, "scoreda.stages.analysis", ["--cycle", "3"], c.filter.ranks)
    assert cmd.startswith("srun --ntasks=12 --nodes=2 --ntasks-per-node=8 --cpus-per-task=7 ")
    assert "--gpus-per-task=1 --gpu-bind=closest" in cmd and cmd.endswith(
        "-m scoreda.stages.analysis --cycle 3"
    )
    train = launch_command(c, "scoreda.stages.train", ["--cycle", "3"], 16)
    assert train.startswith("srun --ntasks=16 --nodes=2 --ntasks-per-node=8")
    os.environ.pop("SLURM_JOB_ID", None)
    assert provider_mode(c) == "submit"  # outside an allocation
    assert provider_mode(cfg_of("platform=frontier", "platform.provider=allocation")) == "allocation"


def test_local_and_slurm_commands():
    local = cfg_of("filter.ranks=2")
    assert mpi_command(local, "m", [], 2).split()[:3] == ["mpiexec", "-n", "2"]
    slurm = cfg_of("platform=slurm", "platform.srun_options='--mpi=pmi2'")
    assert mpi_command(slurm, "m", [], 2).startswith("srun --ntasks=2 --nodes=1 --ntasks-per-node=2")
    assert "--mpi=pmi2" in mpi_command(slurm, "m", [], 2)
    assert launch_command(cfg_of("parallel.launcher=torchrun"), "x.py", ["a"], 2).endswith(
        "--nproc_per_node=2 x.py a"
    )


def test_bad_platform_values_are_one_line_errors():
    for bad, key in (
        (["platform.provider=cloud", "platform=slurm"], "platform.provider"),
        (["platform.mpi_launcher=srun"], "platform.mpi_launcher"),
        (["platform.end_time=tomorrow"], "platform.end_time"),
        (["platform=slurm", "platform.ranks_per_node=0"], "platform.ranks_per_node"),
    ):
        out = subprocess.run(
            [*CYCLE, *bad, "run_dir=/tmp/never"],
            cwd=ROOT,
            env=env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 2 and out.stderr.startswith(f"config error: {key}:"), out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_end_time_parsing():
    assert end_time_seconds("1700000000") == 1.7e9
    assert end_time_seconds("2026-11-21T22:30:00") == pytest.approx(
        time.mktime(time.strptime("2026-11-21T22:30:00", "%Y-%m-%dT%H:%M:%S"))
    )
    assert end_time_seconds("NONE") is None and end_time_seconds(None) is None


def test_walltime_gate_admits_a_cycle_only_if_it_fits(tmp_path):
    (tmp_path / "timings").mkdir()
    for stage, s in (("forecast", 4.0), ("analysis", 6.0), ("nature", 100.0)):  # nature runs ahead
        (tmp_path / "timings" / f"{stage}-000001.json").write_text(
            json.dumps({"stage": stage, "cycle": 1, "seconds": s})
        )
    now = time.time()
    assert walltime_gate(str(tmp_path), 2, now + 30, 15, None) >= now  # 10 s + 15 s fit in 30 s
    with pytest.raises(WalltimeStop, match="cycle 2 not started"):
        walltime_gate(str(tmp_path), 2, now + 20, 15, None)
    with pytest.raises(WalltimeStop):  # the measured gap between gates counts too
        walltime_gate(str(tmp_path), 2, now + 30, 15, now - 20)
    with pytest.raises(WalltimeStop):  # and so does the floor
        walltime_gate(str(tmp_path), 2, now + 30, 15, None, floor=20)
    (tmp_path / "cycles" / "000002").mkdir(parents=True)
    (tmp_path / "cycles" / "000002" / "scores.json").write_text("{}")
    assert walltime_gate(str(tmp_path), 2, now, 15, None) >= now  # complete already: always admitted


@pytest.mark.slow
def test_workflow_with_no_time_left_starts_no_cycle(tmp_path):
    cmd = [*CYCLE, f"run_dir={tmp_path / 'run'}", "cycles=2"]
    cmd += [*SMALL, f"platform.end_time={time.time() - 1:.0f}"]
    out = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "no cycle fits in this allocation" in out.stderr
    assert not (tmp_path / "run" / "cycles" / "000001" / "forecast.h5").exists()


@pytest.mark.slow
def test_a_killed_mpi_stage_is_retried_and_the_run_is_unchanged(tmp_path):
    """retries=1: SIGKILL of the analysis MPI job of cycle 2 mid-run; Parsl runs it again and the run
    ends with the numbers of an undisturbed one (nothing half-written was taken for complete)."""
    base = [*CYCLE, "cycles=3", "filter.ranks=2", *SMALL]
    ref = subprocess.run(
        [*base, f"run_dir={tmp_path / 'ref'}"],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    killed = []

    def kill_analysis_of_cycle_2():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            ps = subprocess.run(
                ["pgrep", "-f", "scoreda.stages.analysis .*--cycle 2$"], capture_output=True, text=True
            )
            pids = [int(p) for p in ps.stdout.split()]
            if pids:
                time.sleep(0.5)  # mid-stage
                for p in pids:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                killed.extend(pids)
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_analysis_of_cycle_2)
    watcher.start()
    out = subprocess.run(
        [*base, f"run_dir={tmp_path / 'run'}", "platform.retries=1"],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    watcher.join()
    assert killed, "the analysis of cycle 2 was never seen running"
    assert out.returncode == 0, out.stderr[-2000:]
    log = (tmp_path / "run" / "logs" / "analysis-000002.err").read_text()
    assert log.count("--> executable follows <--") == 2  # the first attempt and Parsl's retry
    assert (tmp_path / "run" / "metrics.csv").read_text() == (tmp_path / "ref" / "metrics.csv").read_text()


@pytest.mark.slow
def test_scaling_sweeps_run_here_and_collect_into_a_table(tmp_path):
    for exp, extra in (
        ("scaling_ensf", ["scaling.per_rank=2000", "scaling.n_steps=20", "scaling.repeats=1"]),
        (
            "scaling_vit",
            ["parallel=ddp,zero2", "scaling.steps=1", "scaling.warmup=1", "scaling.batch_per_rank=2"],
        ),
    ):
        out_dir = tmp_path / exp
        cmd = [
            sys.executable,
            str(ROOT / "workflows" / "scaling.py"),
            "-m",
            f"experiment={exp}",
            f"scaling.out_dir={out_dir}",
            *extra,
        ]
        run = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stderr[-3000:]
        col = subprocess.run(
            cmd[:2] + [f"experiment={exp}", f"scaling.out_dir={out_dir}", "scaling.collect=true"],
            cwd=ROOT,
            env=env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert col.returncode == 0, col.stderr[-3000:]
        rows = json.loads((out_dir / "scaling.json").read_text())
        assert sorted(r["ranks"] for r in rows) == ([1, 2] if exp == "scaling_ensf" else [1, 1, 2, 2])
        for r in rows:
            assert r["efficiency"] > 0 and (r["time_s"] if exp == "scaling_ensf" else r["tokens_s"]) > 0
            assert r["efficiency"] == 1.0 or r["ranks"] == 2
        assert (out_dir / "scaling.png").stat().st_size > 10_000 and "| 2 |" in (
            out_dir / "scaling.md"
        ).read_text()
    dry = subprocess.run(
        [
            sys.executable,
            str(ROOT / "workflows" / "scaling.py"),
            "-m",
            "experiment=scaling_ensf",
            "platform=frontier",
            "scaling.submit=sbatch",
            "scaling.ranks=8,64",
            f"scaling.out_dir={tmp_path / 'f'}",
            "--dry-run",
        ],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "#SBATCH --nodes=1" in dry.stdout and "#SBATCH --nodes=8" in dry.stdout
    assert "source slurm/frontier-env.sh" in dry.stdout and not (tmp_path / "f" / "jobs").exists()
