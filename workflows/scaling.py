"""Scaling studies as Hydra multiruns (seed 002, Figs. 7 and 8): one job per sweep point.

    python workflows/scaling.py -m experiment=<study>                      # measure here, 1 and 2 ranks
    python workflows/scaling.py -m experiment=<study> platform=frontier scaling.submit=sbatch \\
        scaling.ranks=8,64,512 --dry-run                                   # print one sbatch job each
    python workflows/scaling.py experiment=<study> scaling.collect=true    # table + plots

with <study> one of ``configs/experiment/scaling_*.yaml`` (README: the filter's weak scaling, and
ViT training: preset × strategy × ranks).

A point with ``scaling.submit=local`` runs its measurement now, under the platform's launcher
(``mpiexec``/``torchrun`` here, an ``srun`` job step inside an allocation): a filter's weak scaling is
``scripts/bench_filters.py``'s worker (``scaling.per_rank`` × ranks state values, sharded over the
state), ViT training is ``scripts/bench_vit.py``'s worker (``scaling.batch_per_rank`` × ranks global
batch). Its JSON lands in ``OUT/points/<tag>.json`` (OUT = ``scaling.out_dir``). With
``scaling.submit=sbatch`` the point becomes ``OUT/jobs/<tag>.sbatch`` — the same command with
``scaling.submit=local`` inside an allocation of ceil(ranks / ``platform.ranks_per_node``) nodes —
submitted, or printed with ``--dry-run``. ``scaling.collect=true`` gathers the points into
``OUT/scaling.json``, ``OUT/scaling.md`` and ``OUT/scaling.png`` (throughput and efficiency
against devices).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflows"))
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

from platforms import launch_command, mpi_command, precheck_overrides, run_validated  # noqa: E402

from scoreda.io import write_text  # noqa: E402

DRY_RUN = "--dry-run"


def tag(cfg: DictConfig) -> str:
    sc = cfg.scaling
    if sc.study == "analysis":
        return f"{sc.filter}-d{sc.per_rank}-r{sc.ranks:05d}"
    return f"vit-{cfg.surrogate.name}-{cfg.parallel.name}-r{sc.ranks:05d}"


def nodes(cfg: DictConfig) -> int:
    """Nodes of this point: ceil(ranks / ``platform.ranks_per_node``); this machine is one node."""
    return 1 if cfg.platform.name == "local" else -(-cfg.scaling.ranks // cfg.platform.ranks_per_node)


def worker_command(cfg: DictConfig) -> str:
    """The measurement of this point on ``scaling.ranks`` processes, by the platform's launcher."""
    sc = cfg.scaling
    if sc.study == "analysis":
        spec = dict(
            filter=sc.filter,
            case="scaling",
            d=sc.per_rank * sc.ranks,
            n_steps=sc.n_steps,
            repeats=sc.repeats,
            ranks=sc.ranks,
            shard="state" if sc.ranks > 1 else "-",
            loop=False,
            budget_s=1e9,
            threads=cfg.platform.threads_per_worker,
        )
        args = ["--worker", json.dumps(spec)]
        return mpi_command(cfg, str(ROOT / "scripts" / "bench_filters.py"), args, sc.ranks)
    spec = dict(
        preset=cfg.surrogate.name,
        strategy=cfg.parallel.name,
        ranks=sc.ranks,
        gpu=sc.gpu,
        precision="bf16" if sc.gpu else cfg.parallel.precision,
        batch=sc.batch_per_rank * sc.ranks,
        steps=sc.steps,
        warmup=sc.warmup,
        threads=cfg.platform.threads_per_worker,
        peak_tflops=None,
    )
    return launch_command(
        cfg, str(ROOT / "scripts" / "bench_vit.py"), ["--worker", json.dumps(spec)], sc.ranks
    )


def measure(cfg: DictConfig, out: Path) -> dict:
    """Run this point here (or inside the allocation); its row in ``OUT/points/<tag>.json``."""
    command = worker_command(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg.platform.threads_per_worker)}
    env.setdefault("DS_ACCELERATOR", "cuda" if cfg.scaling.gpu else "cpu")
    p = subprocess.run(command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"scaling point {tag(cfg)} failed ({command}):\n{p.stderr[-3000:]}")
    result = json.loads(p.stdout.strip().splitlines()[-1])
    row = {
        "tag": tag(cfg),
        "study": cfg.scaling.study,
        "ranks": cfg.scaling.ranks,
        "nodes": nodes(cfg),
        "platform": cfg.platform.name,
        "command": command,
        **result,
    }
    if row["study"] == "analysis":
        row |= {
            "filter": cfg.scaling.filter,
            "per_rank": cfg.scaling.per_rank,
            "dimension": cfg.scaling.per_rank * cfg.scaling.ranks,
        }
    else:
        row |= {"preset": cfg.surrogate.name, "strategy": cfg.parallel.name}
    write_text(out / "points" / f"{row['tag']}.json", json.dumps(row, indent=1))
    return row


def job_script(cfg: DictConfig, out: Path, overrides: list[str]) -> str:
    """An sbatch job measuring this point inside its own allocation (the same command, submit=local)."""
    p, name = cfg.platform, tag(cfg)
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=scaling-{name}",
        f"#SBATCH --nodes={nodes(cfg)}",
        f"#SBATCH --time={cfg.scaling.time}",
        "#SBATCH --exclusive",
        f"#SBATCH --output={out}/jobs/{name}-%j.out",
    ]
    lines += [f"#SBATCH --{k}={v}" for k in ("account", "partition", "qos") if (v := p.get(k))]
    lines += [s for s in p.scheduler_options.splitlines() if s.strip()]
    lines += ["set -euo pipefail", f"cd {shlex.quote(str(ROOT))}"]
    if p.env_script:
        lines.append(f"source {shlex.quote(p.env_script)}")
    keep = [o for o in overrides if not o.startswith(("scaling.submit=", "scaling.dry_run="))]
    python = "${SCOREDA_PYTHON:-.venv/bin/python}"
    lines.append(f"{python} workflows/scaling.py {shlex.join(keep)} scaling.submit=local")
    return "\n".join(lines) + "\n"


def collect(cfg: DictConfig, out: Path) -> list[dict]:
    """Every point of ``OUT/points/`` into one table, with the efficiency against the fewest ranks."""
    from scoreda.plotting import plot_scaling

    rows = [json.loads(f.read_text()) for f in sorted((out / "points").glob("*.json"))]
    if not rows:
        raise SystemExit(f"scaling.collect: no points in {out / 'points'} (run the sweep first)")
    for r in rows:
        series = [q for q in rows if _series(q) == _series(r)]
        base = min(series, key=lambda q: q["ranks"])
        if analysis(r):  # weak scaling: the time per analysis should stay flat
            r["efficiency"] = base["time_s"] / r["time_s"]
        else:  # throughput per device relative to the smallest run
            r["efficiency"] = (r["tokens_s"] / r["ranks"]) / (base["tokens_s"] / base["ranks"])
    rows.sort(key=lambda r: (_series(r), r["ranks"]))
    write_text(out / "scaling.json", json.dumps(rows, indent=1))
    write_text(out / "scaling.md", markdown(rows))
    plot_scaling(rows, out / "scaling.png")
    print(markdown(rows))
    print(f"table: {out / 'scaling.md'}  plot: {out / 'scaling.png'}")
    return rows


def analysis(r: dict) -> bool:
    """A row of an analysis (filter weak-scaling) study: it has a state size per rank."""
    return "per_rank" in r


def _series(r: dict) -> str:
    if analysis(r):
        return f"{r.get('filter', '')} d/rank={r['per_rank']:.0e}".lstrip()
    return f"{r['preset']} {r['strategy']}"


def markdown(rows: list[dict]) -> str:
    if analysis(rows[0]):
        head = "| series | ranks | nodes | dimension | s / analysis | efficiency |\n"
        head += "|---|---:|---:|---:|---:|---:|\n"
        body = [
            f"| {_series(r)} | {r['ranks']} | {r['nodes']} | {r['dimension']:.2e} | {r['time_s']:.3f} "
            f"| {r['efficiency']:.2f} |"
            for r in rows
        ]
    else:
        head = (
            "| series | ranks | nodes | tokens/s | TFLOP/s per device | peak mem GiB | efficiency |\n"
            "|---|---:|---:|---:|---:|---:|---:|\n"
        )
        body = [
            f"| {_series(r)} | {r['ranks']} | {r['nodes']} | {r['tokens_s']:.0f} "
            f"| {r['tflops_per_device']:.4f} | {r['peak_mem_gib']:.2f} | {r['efficiency']:.2f} |"
            for r in rows
        ]
    return head + "\n".join(body) + "\n"


def run(cfg: DictConfig) -> None:
    if cfg.scaling.study == "analysis" and cfg.scaling.filter is None:
        sys.exit("config error: scaling.filter: name the filter to time (a name of filter=)")
    out = Path(cfg.scaling.out_dir).resolve()
    if cfg.scaling.collect:
        collect(cfg, out)
        return
    if cfg.scaling.submit == "local":
        row = measure(cfg, out)
        key = "time_s" if analysis(row) else "tokens_s"
        print(f"{row['tag']}: {key} = {row[key]:.4g}  → {out / 'points' / row['tag']}.json")
        return
    from hydra.core.hydra_config import HydraConfig

    script = job_script(cfg, out, list(HydraConfig.get().overrides.task))
    path = out / "jobs" / f"{tag(cfg)}.sbatch"
    if cfg.scaling.dry_run:
        print(f"# {path}\n{script}")
        return
    write_text(path, script)
    sub = subprocess.run(["sbatch", str(path)], capture_output=True, text=True)
    if sub.returncode != 0:
        raise SystemExit(f"sbatch {path}: {sub.stderr.strip()}")
    print(f"{path}: {sub.stdout.strip()}")


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_validated(run, cfg)


if __name__ == "__main__":
    if DRY_RUN in sys.argv:  # a flag, not a Hydra override
        sys.argv = [a for a in sys.argv if a != DRY_RUN] + ["scaling.dry_run=true"]
    precheck_overrides(ROOT / "configs", sys.argv[1:])
    main()
