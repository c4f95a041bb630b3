"""Benchmark of ViT surrogate training: throughput per preset, strategy and rank count (issue 4, item 5).

Each case runs in its own processes (``torchrun --standalone`` for 2+ ranks, a plain process for one)
and times ``Trainer.step`` on synthetic data after ``--warmup`` steps: the median of ``--steps`` timed
steps, each from a barrier to the all-reduced loss (the slowest rank). Per case:

- samples/s and tokens/s (tokens = (img_size/patch)² per sample), all ranks together;
- TFLOP/s per device = ``flops_per_sample`` (6·tokens·params + 12·depth·tokens²·D, the paper's
  6·tokens·params plus attention) × samples/s / ranks;
- MFU = TFLOP/s per device / the device's peak — measured here as the best of a few large matmuls
  in the case's precision (``matmul_tflops``), and against ``--peak-tflops`` when given (a spec sheet);
- peak memory per rank: ``torch.cuda.max_memory_allocated`` on GPU, peak RSS on CPU.

CPU (default): ``vit_tiny`` with every strategy of ``parallel/`` on 1 and 2 ranks, fp32.
GPU (``--gpu``): ``vit_64`` and ``vit_128`` in bf16 on one device, attention forced to the flash
kernel (``torch.nn.attention.sdpa_kernel``), the strategies of ``--strategies``.

    .venv/bin/python scripts/bench_vit.py [--gpu] [--presets vit_tiny] [--strategies ddp,zero2]
        [--ranks 1,2] [--batch 8] [--steps 5] [--warmup 2] [--out runs/bench/bench_vit.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp_full", "fsdp_grad_op")


def compose(preset: str, strategy: str, precision: str, batch: int, ranks: int):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from scoreda.config import validate

    overrides = [
        f"surrogate={preset}",
        f"parallel={strategy}",
        f"parallel.precision={precision}",
        f"parallel.ranks={ranks}",
        f"surrogate.batch_size={batch}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return validate(hydra_compose("config", overrides=overrides))


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """Best of 5 timed n×n×n matmuls (2n³ FLOPs each) on ``device`` in ``dtype``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(6):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(spec: dict) -> None:
    """One case on this rank; rank 0 prints its JSON row."""
    import torch.distributed as dist

    from scoreda.surrogate import build_vit, flops_per_sample
    from scoreda.surrogate.distributed import discover, init_distributed
    from scoreda.surrogate.trainer import Trainer

    torch.set_num_threads(spec["threads"])
    env = discover()
    # srun --gpus-per-task=1 shows each rank one device; torchrun on a node shows them all
    device = torch.device(f"cuda:{env.local_rank % torch.cuda.device_count()}" if spec["gpu"] else "cpu")
    if spec["gpu"]:
        torch.cuda.set_device(device)
    init_distributed(env, "auto")
    cfg = compose(spec["preset"], spec["strategy"], spec["precision"], spec["batch"], env.world_size)
    s = cfg.surrogate
    trainer = Trainer(lambda: build_vit(s), s, cfg.parallel, env, device, total_steps=1000)
    b = s.batch_size // env.world_size
    g = torch.Generator().manual_seed(env.rank)
    x = torch.randn((b, s.channels, s.img_size, s.img_size), generator=g).to(device)
    y = torch.randn((b, s.channels, s.img_size, s.img_size), generator=g).to(device)
    if spec["gpu"]:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        attention = sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    else:
        from contextlib import nullcontext

        attention = nullcontext()
    times = []
    with attention:
        for i in range(spec["warmup"] + spec["steps"]):
            dist.barrier()
            sync(device)
            t = time.perf_counter()
            trainer.step(x, y)  # all-reduces the loss: ends when the slowest rank is done
            sync(device)
            if i >= spec["warmup"]:
                times.append(time.perf_counter() - t)
    step_s = torch.tensor(statistics.median(times), dtype=torch.float64)
    dist.all_reduce(step_s, op=dist.ReduceOp.MAX)
    if spec["gpu"]:
        peak = torch.tensor(float(torch.cuda.max_memory_allocated(device)))
    else:
        peak = torch.tensor(float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    dtype = torch.bfloat16 if spec["precision"] == "bf16" else torch.float32
    peak_tflops = matmul_tflops(device, dtype, 8192 if spec["gpu"] else 1024)
    dist.barrier()
    if env.rank == 0:
        n_tok = (s.img_size // s.patch) ** 2
        samples_s = s.batch_size / float(step_s)
        tflops = flops_per_sample(s) * samples_s / env.world_size / 1e12
        row = {
            "step_s": float(step_s),
            "samples_s": samples_s,
            "tokens_s": samples_s * n_tok,
            "tflops_per_device": tflops,
            "matmul_tflops": peak_tflops,
            "mfu_vs_matmul": tflops / peak_tflops,
            "peak_mem_gib": float(peak) / 2**30,
            "params": sum(p.numel() for p in build_vit(s, device="meta").parameters()),
            "tokens_per_sample": n_tok,
            "device": torch.cuda.get_device_name(device) if spec["gpu"] else "cpu",
        }
        if spec.get("peak_tflops"):
            row["mfu_vs_spec"] = tflops / spec["peak_tflops"]
        print(json.dumps(row))
    dist.destroy_process_group()


def launch(spec: dict) -> dict:
    """Run one case in fresh processes; its JSON row."""
    me = [str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    if spec["ranks"] == 1:
        cmd = [sys.executable, *me]
    else:
        torchrun = str(Path(sys.executable).parent / "torchrun")
        cmd = [torchrun, "--standalone", f"--nproc_per_node={spec['ranks']}", *me]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(spec["threads"]),
        "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cuda" if spec["gpu"] else "cpu"),
        "PYTHONUNBUFFERED": "1",
    }
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"bench case {spec} failed:\n{p.stderr[-3000:]}")
    return {**spec, **json.loads(p.stdout.strip().splitlines()[-1])}


def environment() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cpu": models[0] if models else platform.processor(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "host": platform.node(),
        "loadavg_start": os.getloadavg(),
    }


def table(rows: list[dict]) -> str:
    head = ("preset", "strategy", "ranks", "prec", "step s", "tokens/s", "TFLOP/s/dev", "MFU", "peak GiB")
    lines = ["  ".join(f"{h:>11}" for h in head)]
    for r in rows:
        cells = (
            r["preset"],
            r["strategy"],
            str(r["ranks"]),
            r["precision"],
            f"{r['step_s']:.3f}",
            f"{r['tokens_s']:.3g}",
            f"{r['tflops_per_device']:.3g}",
            f"{r['mfu_vs_matmul']:.1%}",
            f"{r['peak_mem_gib']:.2f}",
        )
        lines.append("  ".join(f"{c:>11}" for c in cells))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true", help="vit_64 and vit_128, bf16, one GPU")
    ap.add_argument("--presets", help="comma-separated (default: vit_tiny, or vit_64,vit_128 with --gpu)")
    ap.add_argument("--strategies", help="comma-separated strategies (default: all six; GPU: zero1)")
    ap.add_argument("--ranks", default=None, help="comma-separated rank counts (default 1,2; GPU: 1)")
    ap.add_argument("--precision", default=None, help="fp32 | bf16 (default fp32; GPU: bf16)")
    ap.add_argument("--batch", type=int, default=None, help="global batch (default 8; GPU: 32)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per case")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's spec-sheet peak (for MFU)")
    ap.add_argument("--out", default="runs/bench/bench_vit.json", help="JSON output")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    presets = (args.presets or ("vit_64,vit_128" if args.gpu else "vit_tiny")).split(",")
    strategies = (args.strategies or ("zero1" if args.gpu else ",".join(STRATEGIES))).split(",")
    ranks = [int(r) for r in (args.ranks or ("1" if args.gpu else "1,2")).split(",")]
    common = {
        "gpu": args.gpu,
        "precision": args.precision or ("bf16" if args.gpu else "fp32"),
        "batch": args.batch or (32 if args.gpu else 8),
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "peak_tflops": args.peak_tflops,
    }
    rows = []
    for preset in presets:
        for strategy in strategies:
            for r in ranks:
                spec = {**common, "preset": preset, "strategy": strategy, "ranks": r}
                rows.append(launch(spec))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    from scoreda.io import write_text

    write_text(args.out, json.dumps({"env": environment(), "rows": rows}, indent=1))
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
