"""Every command in README.md runs as written, with tiny sizes appended: extracted from the README's
``bash`` blocks, run in order (later ones read what earlier ones wrote, as a reader's would) in a
scratch working directory that holds the repository's ``.venv``, ``workflows``, ``scripts`` and
``configs``. A command that another test already runs the same way (its script and every argument,
tiny sizes added; e.g. the paper's multiruns in test_experiments.py) is not run twice: the test
checks that the covering test still holds each of its arguments. Commands that need something this
machine has not (a Slurm account, the test suite itself) are listed with the reason."""

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

TINY_VIT = ["surrogate.img_size=16", "surrogate.embed_dim=32", "surrogate.depth=2", "surrogate.heads=2"]
# no burn_in: the experiments' own (10, 20) is longer than these runs, which must run all the same
TINY_RUN = ["members=4", "cycles=2", "model.spinup_cycles=2", "model.member_spacing_cycles=1"]
# appended to each Hydra command by its model (a later override wins; ``++``: the key is in every
# filter's schema but only in ensf's yaml, and sweeps take other filters)
TINY = {
    "sqg": ["model.N=16", *TINY_RUN, "++filter.n_steps=5", "progress=false", *TINY_VIT],
    "lorenz96": ["model.size=8", *TINY_RUN, "++filter.n_steps=5", "progress=false"],
    "qg2l": ["model.nx=16", *TINY_RUN, "++filter.n_steps=5", "observation.n_stations=16", "progress=false"],
}
TINY_PRETRAIN = [
    "pretrain.trajectories=3",
    "pretrain.held_out=1",
    "pretrain.length=3",
    "pretrain.decorrelate_cycles=1",
    "pretrain.steps=2",
    "surrogate.batch_size=4",
]
TINY_SCALING = ["scaling.per_rank=2000", "scaling.n_steps=5", "scaling.repeats=1", "scaling.steps=1"]
RUN_BY = {  # command (as the README has it, up to its first override) -> the test that runs it too
    "workflows/cycle.py -m experiment=paper_fig4": "test_experiments.py",
    "workflows/cycle.py -m experiment=filters_shocks": "test_experiments.py",
    "scripts/paper_results.py": "test_experiments.py",
    "workflows/cycle.py -m experiment=qg_stations": "test_qg_stations.py",
    "workflows/pretrain.py parallel=zero2 parallel.ranks=2": "test_surrogate_cycle.py",
    "workflows/cycle.py forecaster=vit": "test_surrogate_cycle.py",
    "scripts/bench_vit.py": "test_bench_vit.py",
    "workflows/train_score.py scorenet=diffda_cpu": "test_diffda.py",
    "workflows/train_score.py": "test_learned.py",
    "workflows/cycle.py experiment=filters_every4 filter=sda": "test_learned.py",  # needs trained weights
    "workflows/cycle.py experiment=filters_every4 filter=diffda": "test_diffda.py",  # the same
    "workflows/scaling.py -m experiment=scaling_vit": "test_platforms.py",
}
COVERED_ELSEWHERE = {
    "make run": "fresh-clone-check and CI run it (it is the quickstart: 50 cycles at 64²)",
    "make test": "it is this suite",
    "sbatch": "needs a Slurm account; tests/test_slurm.py submits slurm/slurm.sbatch to a local Slurm",
    "platform=slurm": "submits a block to a Slurm queue; tests/test_slurm.py does it on a local Slurm",
}


def readme_commands() -> list[str]:
    """The commands of the README's ``bash`` blocks, continuation lines joined, comments dropped."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(shlex.split(line, comments=True)))
    return commands


def skip_reason(command: str) -> str | None:
    for key, reason in COVERED_ELSEWHERE.items():
        if command.startswith(key) or (
            key == "platform=slurm" and key in command and "--dry-run" not in command
        ):
            return reason
    return None


def run_by(command: str) -> str | None:
    """The test file that runs ``command`` already (``RUN_BY``), or None."""
    words = command.split()[1:]
    for prefix, test in RUN_BY.items():
        if " ".join(words).startswith(prefix):
            return test
    return None


ALIASES = {"cycle.py": ("cycle.py", "CYCLE")}  # conftest.CYCLE starts workflows/cycle.py

SIZES = ("cycles", "members", "burn_in", "run_dir")  # what a test sets to its own small values


def covered_words(command: str) -> list[str]:
    """What a test that runs ``command`` must hold: the script's name, each flag, each override's key
    and (but for sizes) each of its values; paths are the test's own."""
    words = command.split()
    need = [Path(words[1]).name]
    for w in words[2:]:
        if "=" in w:
            key, values = w.split("=", 1)
            need += [key] + ([] if key in SIZES else [v for v in values.split(",") if "/" not in v])
        elif "/" not in w:
            need.append(w)
    return need


def tiny(command: str, scratch: Path) -> list[str]:
    """The command with tiny sizes appended and its placeholders and absolute /tmp paths made
    local to the scratch directory."""
    words = [
        w.replace("<PROJECT>", "tst0000").replace("=/tmp/", f"={scratch}/tmp/") for w in shlex.split(command)
    ]
    script = words[1]
    if not script.startswith("workflows/"):
        return words
    model = (
        "lorenz96" if "model=lorenz96" in words else "qg2l" if "experiment=qg_stations" in words else "sqg"
    )
    extra = list(TINY[model])
    if script.endswith("pretrain.py"):
        extra += TINY_PRETRAIN
    if script.endswith("scaling.py") and "--dry-run" not in words:
        extra += TINY_SCALING
    if "filter.ranks=2" in words:
        extra = [e for e in extra if e != "members=4"] + ["members=4"]  # two ranks share the members
    return [*words, *extra]


COMMANDS = list(dict.fromkeys(readme_commands()))  # each once (pretrain.py is shown twice)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Every runnable README command, in order: {command: (completed process, seconds)}."""
    scratch = tmp_path_factory.mktemp("readme")
    for name in (".venv", "workflows", "scripts", "configs", "slurm"):
        (scratch / name).symlink_to(ROOT / name)
    (scratch / "docs" / "figures").mkdir(parents=True)  # paper_results writes a figure there
    env = {**os.environ, "WANDB_MODE": "offline", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    out = {}
    for command in COMMANDS:
        if skip_reason(command) or run_by(command):
            continue
        t0 = time.perf_counter()
        argv = tiny(command, scratch)
        out[command] = (
            subprocess.run(argv, cwd=scratch, env=env, capture_output=True, text=True, timeout=900),
            time.perf_counter() - t0,
        )
    return out


def test_the_readme_has_commands():
    assert len(COMMANDS) >= 20, COMMANDS
    assert any(c.startswith(".venv/bin/python workflows/cycle.py experiment=quickstart") for c in COMMANDS)


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs(ran, command):
    reason = skip_reason(command)
    if reason:
        pytest.skip(reason)
    if (test := run_by(command)) is not None:
        source = (ROOT / "tests" / test).read_text()
        for need in covered_words(command):
            assert any(n in source for n in ALIASES.get(need, (need,))), (
                f"{test} no longer runs `{command}` ({need!r} is not in it)"
            )
        return
    proc, seconds = ran[command]
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
