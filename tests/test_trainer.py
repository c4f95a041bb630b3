"""The surrogate trainer under real launchers (torchrun, mpiexec, the deepspeed launcher) on 2 CPU ranks,
every strategy of ``configs/parallel/``; launcher discovery on fake environments (a pure function).

One launch runs many cases one after another (``tests/trainer_cases.py``): process and DeepSpeed
start-up dominate the time on 2 cores.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from scoreda.surrogate.distributed import DistEnv, detect_launcher, discover, expand_hostlist, free_port
from scoreda.surrogate.strategies import deepspeed_config
from scoreda.surrogate.trainer import batch_indices, lr_factor

ROOT = Path(__file__).resolve().parents[1]
CASES = Path(__file__).parent / "trainer_cases.py"
BIN = Path(sys.executable).parent
STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp_full", "fsdp_grad_op")
NO_DROP = "@surrogate.drop_rate=0@surrogate.drop_path=0"
ACCUM = (
    f"ddp@surrogate.grad_accum=1{NO_DROP}",
    f"ddp@surrogate.grad_accum=4{NO_DROP}",
    f"zero2@surrogate.grad_accum=4{NO_DROP}",
)
STEPS, RESUME_AT = 5, 2
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _clean_env() -> dict:
    """This environment without any launcher's variables (pytest itself may run under srun or mpiexec)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCHER_VARS and not k.startswith(("SLURM_", "PMI_", "OMPI_", "TORCHELASTIC_", "PMIX_"))
    }
    return env | {
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "PYTHONUNBUFFERED": "1",
    }


def launch(launcher: list[str], tmp: Path, cases, steps: int = STEPS, *extra: str) -> dict:
    """Run ``trainer_cases.py`` under ``launcher`` and return its JSON (fail with the output's tail)."""
    out = tmp / "out.json"
    cmd = [
        *launcher,
        str(CASES),
        "--strategy",
        ",".join(cases),
        "--steps",
        str(steps),
        "--out",
        str(out),
        *extra,
    ]
    env = _clean_env() | {"TRAINER_CASES_TMP": str(tmp)}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0 and out.is_file(), f"{' '.join(cmd)} failed:\n{(p.stdout + p.stderr)[-4000:]}"
    return json.loads(out.read_text())


def torchrun(n: int = 2) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node", str(n), "--master-port", str(free_port())]


@pytest.fixture(scope="module")
def tr(tmp_path_factory):
    """All six strategies and three accumulation cases on 2 ranks by torchrun, with save → resume."""
    d = tmp_path_factory.mktemp("torchrun")
    return launch(torchrun(), d, [*STRATEGIES, *ACCUM], STEPS, "--resume-at", str(RESUME_AT))


# ------------------------------------------------------------------------------------ torchrun, 2 ranks


@pytest.mark.slow
def test_torchrun_is_discovered(tr):
    assert (tr["launcher"], tr["world_size"]) == ("torchrun", 2)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_loss_decreases(tr, strategy):
    losses = tr["strategies"][strategy]["losses"]
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.02, losses


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ranks_hold_identical_parameters(tr, strategy):
    """The full fp32 state gathered on each rank; for ddp/zero1/zero2 also each rank's own module, which in
    fp32 must equal ZeRO's master weights."""
    r = tr["strategies"][strategy]
    assert r["full_keys"] > 0
    assert len(r["full"]) == 2 and len(set(r["full"])) == 1
    if strategy in ("ddp", "zero1", "zero2"):
        assert r["local"] == r["full"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES[1:])
def test_strategies_equal_ddp(tr, strategy):
    """Same optimiser, schedule, clipping and batches: fp32 losses equal DDP's (1e-4; zero1/zero2 are
    the paper's comparison), and so do the weights to rounding."""
    ref, r = tr["strategies"]["ddp"], tr["strategies"][strategy]
    assert max(abs(a - b) for a, b in zip(ref["losses"], r["losses"], strict=True)) < 1e-4
    assert r["abs_sum"] == pytest.approx(ref["abs_sum"], rel=1e-6)


@pytest.mark.slow
def test_gradient_accumulation_is_the_global_batch(tr):
    """1, 2 or 4 micro-batches per rank (ddp and zero2): the same optimiser steps to rounding."""
    ref = tr["strategies"][ACCUM[0]]["losses"]
    for case in ACCUM[1:]:
        assert tr["strategies"][case]["losses"] == pytest.approx(ref, abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [*STRATEGIES, ACCUM[2]])
def test_resume_equals_uninterrupted(tr, strategy):
    """K steps, save, a fresh trainer loads, the rest: the same losses and bitwise the same weights
    (optimiser, schedule, data cursor and per-rank dropout RNG all restored)."""
    r = tr["strategies"][strategy]
    assert r["resumed"]["losses"] == r["losses"]
    assert r["resumed"]["full"] == r["full"]
    assert r["resumed"]["refuses_incomplete"], "a checkpoint without its COMPLETE marker was loaded"
    assert not r["resumed"]["partial_left"]


@pytest.fixture(scope="module")
def score_tr(tmp_path_factory):
    """The score network's denoising loss (issue 21) under all six strategies, with save → resume."""
    d = tmp_path_factory.mktemp("scorenet")
    return launch(torchrun(), d, STRATEGIES, STEPS, "--resume-at", str(RESUME_AT), "--model", "scorenet")


@pytest.mark.slow
def test_score_network_trains_and_resumes_under_every_strategy(score_tr):
    """The random t and ε of each sample come from each rank's generator, which checkpoints restore:
    a resumed run is bitwise the uninterrupted one; every strategy takes the same steps as DDP."""
    ref = score_tr["strategies"]["ddp"]
    for strategy in STRATEGIES:
        r = score_tr["strategies"][strategy]
        assert len(set(r["full"])) == 1, strategy  # every rank holds the same weights
        assert r["resumed"]["losses"] == r["losses"] and r["resumed"]["full"] == r["full"], strategy
        assert max(abs(a - b) for a, b in zip(ref["losses"], r["losses"], strict=True)) < 1e-4, strategy
    assert ref["losses"][-1] < ref["losses"][0]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_weights_file_reproduces_the_trainer(tr, strategy):
    """save_weights (gathered fp32, rank 0) → load_weights gives the trainer's own predictions."""
    assert tr["strategies"][strategy]["weights_max_diff"] < 1e-6


# ----------------------------------------------------------------------------------- other launchers


@pytest.mark.slow
def test_mpiexec_equals_torchrun(tr, tmp_path):
    """``mpiexec -n 2`` (mpi4py rendezvous): the same losses and weights as torchrun."""
    got = launch([str(BIN / "mpiexec"), "-n", "2", sys.executable], tmp_path, STRATEGIES)
    assert (got["launcher"], got["world_size"]) == ("mpiexec", 2)
    for s in STRATEGIES:
        assert got["strategies"][s]["losses"] == pytest.approx(tr["strategies"][s]["losses"], abs=1e-7)
        assert got["strategies"][s]["full"] == tr["strategies"][s]["full"]


@pytest.mark.slow
def test_deepspeed_launcher_equals_torchrun(tr, tmp_path):
    """The ``deepspeed`` launcher (RANK etc. plus CROSS_RANK/LOCAL_SIZE and ``--local_rank``)."""
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port())]
    got = launch(cmd, tmp_path, ("zero3", "fsdp_grad_op"))
    assert (got["launcher"], got["world_size"]) == ("deepspeed", 2)
    for s in ("zero3", "fsdp_grad_op"):
        assert got["strategies"][s]["full"] == tr["strategies"][s]["full"]


@pytest.mark.slow
def test_single_process_runs_every_strategy(tmp_path):
    """No launcher: a world of one with its own process group, the same code path."""
    got = launch([sys.executable], tmp_path, STRATEGIES, 2)
    assert (got["launcher"], got["world_size"]) == ("single", 1)
    ref = got["strategies"]["ddp"]["losses"]
    for s in STRATEGIES:
        assert got["strategies"][s]["losses"] == pytest.approx(ref, abs=1e-5)


@pytest.mark.slow
def test_bf16_runs(tmp_path):
    """parallel.precision=bf16 (DeepSpeed bf16, autocast for DDP, FSDP2 mixed precision): finite losses
    near the fp32 ones, fp32 weights gathered."""
    got = launch(torchrun(), tmp_path, STRATEGIES, 2, "--override", "parallel.precision=bf16")
    for s in STRATEGIES:
        r = got["strategies"][s]
        assert all(math.isfinite(v) for v in r["losses"]) and r["losses"][0] == pytest.approx(0.412, abs=0.01)
        assert len(set(r["full"])) == 1
        assert r["weights_max_diff"] < 0.05  # bf16 forward vs the fp32 weights file


# ------------------------------------------------------------------------------- pure pieces, no ranks


def test_lr_schedule():
    f = [lr_factor(t, 4, 20, 1e-3, 1e-5) for t in range(25)]
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f[4] == pytest.approx(1.0) and all(a >= b for a, b in zip(f[4:], f[5:], strict=False))
    assert f[20] * 1e-3 == pytest.approx(1e-5) and f[24] == f[20]
    assert lr_factor(0, 0, 10, 1e-3, 1e-3) == pytest.approx(1.0)


def test_batch_indices_are_epochs_of_permutations():
    stream = torch.cat([batch_indices(10, 4, c, seed=3) for c in range(0, 40, 4)])
    for e in range(4):
        assert sorted(stream[10 * e : 10 * e + 10].tolist()) == list(range(10))
    assert torch.equal(batch_indices(10, 4, 8, 3), stream[8:12])  # resuming at a cursor crosses epochs
    assert not torch.equal(batch_indices(10, 10, 0, 3), batch_indices(10, 10, 0, 4))


def test_deepspeed_config():
    s = OmegaConf.create({"batch_size": 32, "grad_accum": 2, "embed_dim": 64})
    p = OmegaConf.create(
        {"bucket_size": 5e8, "overlap_comm": True, "contiguous_gradients": False, "precision": "bf16"}
    )
    c2 = deepspeed_config(2, s, p, world_size=4)
    assert (c2["train_batch_size"], c2["train_micro_batch_size_per_gpu"]) == (32, 4)
    z = c2["zero_optimization"]
    assert z["reduce_bucket_size"] == z["allgather_bucket_size"] == 500_000_000
    assert isinstance(z["reduce_bucket_size"], int) and z["stage"] == 2 and not z["contiguous_gradients"]
    assert c2["bf16"]["enabled"] and c2["gradient_clipping"] == 1.0
    z3 = deepspeed_config(3, s, p, world_size=4)["zero_optimization"]
    assert (
        z3["stage3_prefetch_bucket_size"] == 500_000_000 and z3["stage3_param_persistence_threshold"] == 640
    )


# ------------------------------------------------------------------------------------------- discover


def test_torchrun_and_deepspeed_variables():
    base = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node7", "MASTER_PORT": "29500"}
    tr = discover(base | {"LOCAL_WORLD_SIZE": "4", "TORCHELASTIC_RUN_ID": "none"})
    assert tr == DistEnv(3, 8, 1, 4, "node7", 29500, "torchrun")
    ds = discover(base | {"CROSS_RANK": "0", "CROSS_SIZE": "2", "LOCAL_SIZE": "4"})
    assert ds == DistEnv(3, 8, 1, 4, "node7", 29500, "deepspeed")
    assert discover(base).launcher == "env"
    with pytest.raises(KeyError, match="MASTER_ADDR"):
        discover({"RANK": "0", "WORLD_SIZE": "2"})


def test_torch_variables_come_before_slurm_and_mpi():
    env = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1", "TORCHELASTIC_RUN_ID": "x"}
    env |= {"SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "1", "PMI_RANK": "0", "PMI_SIZE": "1"}
    assert discover(env).launcher == "torchrun" and discover(env).rank == 1


SRUN = {
    "SLURM_JOB_ID": "123456",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "13",
    "SLURM_NTASKS": "16",
    "SLURM_LOCALID": "5",
    "SLURM_NODEID": "1",
    "SLURM_STEP_NUM_TASKS": "16",
    "SLURM_STEP_TASKS_PER_NODE": "8(x2)",
    "SLURM_STEP_NODELIST": "frontier[00012-00013]",
    "SLURM_NODELIST": "frontier[00010-00014,00020]",
}


def test_srun_variables():
    env = discover(SRUN)
    assert env == DistEnv(13, 16, 5, 8, "frontier00012", 15000 + 123456 % 20000, "srun")
    assert discover({**SRUN, "SLURM_STEP_ID": "1"}).master_port != env.master_port  # steps side by side
    e2 = discover({**SRUN, "MASTER_PORT": "4242"})
    assert (e2.master_addr, e2.master_port) == ("frontier00012", 4242)
    no_step_list = {k: v for k, v in SRUN.items() if k != "SLURM_STEP_NODELIST"}
    assert discover(no_step_list).master_addr == "frontier00010"
    uneven = discover({**SRUN, "SLURM_STEP_TASKS_PER_NODE": "3,2(x2)", "SLURM_NODEID": "2"})
    assert uneven.local_world_size == 2


def test_batch_script_shell_is_not_srun():
    """sbatch's own shell has SLURM_PROCID=0 and the allocation's SLURM_NTASKS, but no job step."""
    batch = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "64", "SLURM_NODELIST": "n[1-8]"}
    assert detect_launcher(batch) == "single"
    assert detect_launcher(batch | {"SLURM_STEP_ID": str(0xFFFFFFFE)}) == "single"  # the batch step's id
    assert detect_launcher(batch | {"SLURM_STEP_ID": "3"}) == "srun"
    env = discover(batch)
    assert (env.rank, env.world_size, env.master_addr, env.launcher) == (0, 1, "127.0.0.1", "single")


def test_mpi_variables_with_given_master():
    """MPICH and Open MPI variables; with MASTER_ADDR/MASTER_PORT given there is no MPI rendezvous."""
    given = {"MASTER_ADDR": "h0", "MASTER_PORT": "5000"}
    mpich = discover(
        {"PMI_RANK": "2", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "2"} | given
    )
    assert mpich == DistEnv(2, 4, 0, 2, "h0", 5000, "mpiexec")
    ompi = {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "6", "OMPI_COMM_WORLD_LOCAL_RANK": "2"}
    env = discover(ompi | {"OMPI_COMM_WORLD_LOCAL_SIZE": "3"} | given)
    assert env == DistEnv(5, 6, 2, 3, "h0", 5000, "mpiexec")
    assert detect_launcher({"PMI_RANK": "0", "PMI_SIZE": "2"}) == "mpiexec"


def test_single_process():
    env = discover({})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (0, 1, 0, 1)
    assert env.master_addr == "127.0.0.1" and 0 < env.master_port < 65536 and env.launcher == "single"


@pytest.mark.parametrize(
    "hostlist, hosts",
    [
        ("frontier[00012-00014,00020]", ["frontier00012", "frontier00013", "frontier00014", "frontier00020"]),
        ("nid001000", ["nid001000"]),
        ("a[1-2],b,c[08-10]", ["a1", "a2", "b", "c08", "c09", "c10"]),
        ("n[9-11]", ["n9", "n10", "n11"]),
        ("rack[1-2]-node[0-1]", ["rack1-node0", "rack1-node1", "rack2-node0", "rack2-node1"]),
        ("x[3]y", ["x3y"]),
    ],
)
def test_expand_hostlist(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("bad", ["n[1-", "n1-2]", "n[a-b]", "n[5-3]"])
def test_expand_hostlist_rejects_garbage(bad):
    with pytest.raises(ValueError):
        expand_hostlist(bad)
