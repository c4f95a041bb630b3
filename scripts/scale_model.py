"""A scale model: the per-cycle time on Frontier for the seed paper's configurations, from counted
bytes and FLOPs, the measured per-element cost here and stated machine constants.

EnSF (paper Fig. 8: weak scaling to 1024 GCDs, d = 10⁶ … 10⁸, "about 0.4 s for 1M dimension and
28 s for 100M"), one analysis of n = 100 steps with M_r members per GCD (``shard=members``):

  compute   n · M_r · d · b / (η · B_hbm)      b = 12 bytes an element-step for ``kernel=fused``
            (z read and written, x̃ read: counted from the kernel), 548 for ``kernel=torch`` (its
            byte count, ``bench_filters.ensf_bytes_per_step``); η the fraction of HBM bandwidth
            reached (ASSUMED, until scripts/gpu_check.sh measures it: ``achieved/copy``).
  gather    M · d · 4 / B_nic   today's code: rank 0 receives every member's analysis (M = R·M_r),
            so this term grows with R; a per-rank write (issue 19, item 2) removes it.
  I/O       2 · M_r · d · 4 / B_fs   each rank reads its forecast members and writes its analysis
            (B_fs per GCD ASSUMED).

ViT (paper Fig. 7: 8 … 1024 GCDs, DDP/ZeRO-1, bf16, global batch = R · b_r): one step is
  compute   b_r · F / (MFU · P_bf16)   F = ``flops_per_sample`` (counted), MFU ASSUMED;
  allreduce 2 (R − 1)/R · 2 · params / B   (bf16 gradients, ring; B = B_if inside a node of 8 GCDs,
            the node's NIC bandwidth shared by its 8 GCDs across nodes), not overlapped (upper
            bound) or fully overlapped (lower bound); efficiency = t(8) / t(R).

Measured here: the CPU kernel's ns per element-step (``--bench``, the JSON of bench_filters), quoted
beside the GPU prediction. Everything else is counted (bytes, FLOPs, parameters) or a constant below.

    .venv/bin/python scripts/scale_model.py [--bench runs/bench/bench_filters_fused.json]
        [--eta 0.8] [--mfu 0.35] [--out runs/bench/scale_model.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scoreda.io import write_text

ROOT = Path(__file__).resolve().parents[1]
# Frontier, per MI250X GCD (spec sheets): HBM2e bandwidth, bf16 dense peak, Infinity Fabric between
# GCDs of a node, 4 Slingshot-11 NICs of 25 GB/s per node of 8 GCDs. File system per GCD: ASSUMED.
FRONTIER = {
    "hbm_gb_s": 1600.0,
    "bf16_tflops": 191.5,
    "if_gb_s": 50.0,
    "nic_gb_s": 25.0,
    "node_nic_gb_s": 100.0,
    "gcds_per_node": 8,
    "fs_gb_s_per_gcd": 2.0,
}
PAPER_ENSF_S = {10**6: 0.4, 10**8: 28.0}  # the paper's "time per step", flat in R (Fig. 8)
VIT = {"vit_64": 157.8e6, "vit_128": 1.24e9, "vit_256": 2.45e9}  # parameters (Table II)
PAPER_VIT_EFF = {"vit_128": 0.86, "vit_256": 0.85}  # scaling efficiency at 1024 GCDs (Sec. V)


def ensf_rows(eta: float, members_per_gcd: int = 20, n_steps: int = 100) -> list[dict]:
    c = FRONTIER
    rows = []
    for d in (10**6, 10**7, 10**8):
        for R in (1, 8, 64, 1024):
            M = R * members_per_gcd
            fused = n_steps * members_per_gcd * d * 12 / (eta * c["hbm_gb_s"] * 1e9)
            torch_ = n_steps * members_per_gcd * d * 548 / (eta * c["hbm_gb_s"] * 1e9)
            gather = 0.0 if R == 1 else M * d * 4 / (c["nic_gb_s"] * 1e9)
            io = 2 * members_per_gcd * d * 4 / (c["fs_gb_s_per_gcd"] * 1e9)
            rows.append({"d": d, "gcds": R, "members": M, "fused_s": fused, "torch_s": torch_,
                         "gather_s": gather, "io_s": io, "paper_s": PAPER_ENSF_S.get(d)})  # fmt: skip
    return rows


def vit_rows(mfu: float, batch_per_gcd: int = 4) -> list[dict]:
    import yaml

    from scoreda.surrogate.vit import flops_per_sample

    c = FRONTIER
    rows = []
    for preset, params in VIT.items():
        cfg = yaml.safe_load((ROOT / "configs" / "surrogate" / f"{preset}.yaml").read_text())
        flops = flops_per_sample(cfg)
        compute = batch_per_gcd * flops / (mfu * c["bf16_tflops"] * 1e12)
        base = None
        for R in (8, 64, 256, 1024):
            bw = c["if_gb_s"] if R <= c["gcds_per_node"] else c["node_nic_gb_s"] / c["gcds_per_node"]
            comm = 2 * (R - 1) / R * 2 * params / (bw * 1e9)
            upper, lower = compute + comm, max(compute, comm)
            base = base or (upper, lower)
            rows.append({"preset": preset, "gcds": R, "flops_per_sample": flops, "compute_s": compute,
                         "allreduce_s": comm, "step_s_no_overlap": upper, "step_s_overlap": lower,
                         "efficiency_no_overlap": base[0] / upper, "efficiency_overlap": base[1] / lower,
                         "paper_1024": PAPER_VIT_EFF.get(preset) if R == 1024 else None})  # fmt: skip
    return rows


def measured_cpu(bench: Path) -> dict | None:
    """ns per element-step of the fused and torch kernels at d = 10⁶ on one CPU thread here."""
    if not bench.is_file():
        return None
    rows = json.loads(bench.read_text())["rows"]
    out = {}
    for r in rows:
        if r["filter"] == "ensf" and r["case"] == "l96-1e6" and r["ranks"] == 1:
            out[f"{r['kernel']}-{r['prior_score']}"] = r["ns_element_step"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", default="runs/bench/bench_filters_fused.json")
    ap.add_argument("--eta", type=float, default=0.8, help="fraction of HBM bandwidth reached (assumed)")
    ap.add_argument("--mfu", type=float, default=0.35, help="ViT model FLOP utilisation (assumed)")
    ap.add_argument("--out", default="runs/bench/scale_model.json")
    args = ap.parse_args()
    ensf, vit = ensf_rows(args.eta), vit_rows(args.mfu)
    cpu = measured_cpu(ROOT / args.bench)
    hbm = FRONTIER["hbm_gb_s"]
    print(f"EnSF, 20 members per GCD, 100 steps, η = {args.eta} of {hbm:.0f} GB/s (assumed)")
    head = f"{'d':>9} {'GCDs':>5} {'fused[s]':>9} {'torch[s]':>9} {'gather[s]':>10} {'I/O[s]':>7}"
    print(head + f" {'paper[s]':>8}")
    for r in ensf:
        paper = f"{r['paper_s']:.1f}" if r["paper_s"] else "-"
        line = f"{r['d']:>9.0e} {r['gcds']:>5} {r['fused_s']:>9.4f} {r['torch_s']:>9.3f}"
        print(line + f" {r['gather_s']:>10.3f} {r['io_s']:>7.3f} {paper:>8}")
    print(f"\nViT, 4 samples per GCD, bf16, MFU {args.mfu} (assumed)")
    head = f"{'preset':8} {'GCDs':>5} {'compute[s]':>10} {'allreduce[s]':>12}"
    print(head + f" {'eff. no overlap':>15} {'eff. overlap':>12}")
    for r in vit:
        line = f"{r['preset']:8} {r['gcds']:>5} {r['compute_s']:>10.3f} {r['allreduce_s']:>12.3f}"
        print(line + f" {r['efficiency_no_overlap']:>15.2f} {r['efficiency_overlap']:>12.2f}")
    if cpu:
        print(f"\nmeasured here (1 CPU thread, ns per element-step at d = 1e6): {cpu}")
    out = {
        "frontier": FRONTIER,
        "eta": args.eta,
        "mfu": args.mfu,
        "ensf": ensf,
        "vit": vit,
        "cpu_measured": cpu,
    }
    write_text(args.out, json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
