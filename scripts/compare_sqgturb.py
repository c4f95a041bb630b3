"""Side by side: scoreda's ``reference`` SQG against sqgturb (jswhit/sqgturb) from one spun-up state.

    git clone https://github.com/jswhit/sqgturb /tmp/sqgturb   # kept out of this repository
    python -m venv /tmp/np2 && /tmp/np2/bin/pip install numpy   # numpy ≥ 2: float32 FFTs
    python scripts/compare_sqgturb.py --sqgturb /tmp/sqgturb --python /tmp/np2/bin/python

The state is our model's 100-day spin-up from seeded noise (the quickstart's truth at cycle 0,
converted to sqgturb's PV units, pv = θ g/(f θ0)). Both codes advance it by the same steps;
the table gives the relative RMS difference ‖θ_ours − θ_sqgturb‖/‖θ_sqgturb‖ and the RMS
difference in K at each lead. sqgturb runs in a subprocess of ``--python``, in single precision
(as the paper ran it) and in double; the difference between those two is float32 round-off
growing in a chaotic flow, the floor any float32 code can reach. numpy < 2 computes float32 FFTs
in float64, so use numpy ≥ 2; the table records the version. Writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

LEADS_H = (12, 24, 48, 120, 240)


def _sqgturb(args) -> None:
    """Subprocess: advance ``state.npy`` (θ, K) with sqgturb, saving θ at every lead."""
    sys.path.insert(0, args.sqgturb)
    from sqgturb import SQG as Turb

    p = json.loads(Path(args.work, "params.json").read_text())
    dtype = np.float32 if args.precision == "single" else np.float64
    scale = p["g"] / (p["f"] * p["theta0"])  # θ [K] → sqgturb's PV units
    pv = (np.load(Path(args.work, "state.npy")).astype(np.float64) * scale).astype(dtype)
    m = Turb(
        pv,
        f=p["f"],
        nsq=p["nsq"],
        L=p["L"],
        H=p["H"],
        U=p["U"],
        r=0.0,
        tdiab=p["tdiab"],
        diff_order=p["diff_order"],
        diff_efold=p["diff_efold"],
        symmetric=True,
        dt=p["dt"],
        dealias=True,
        precision=args.precision,
    )
    out, done = {}, 0
    for lead in p["leads_h"]:
        m.timesteps = int(round(lead * 3600 / p["dt"])) - done
        pv = m.advance(pv)
        done += m.timesteps
        out[str(lead)] = np.asarray(pv, np.float64) / scale
    np.savez(Path(args.work, f"sqgturb-{args.precision}.npz"), numpy=np.__version__, **out)


def run_sqgturb(args, model, x0, leads_h, precision: str) -> dict:
    """θ [2, N, N] (float64) at each lead from sqgturb, started from θ ``x0`` [2, N, N]."""
    with tempfile.TemporaryDirectory() as work:
        np.save(Path(work, "state.npy"), np.asarray(x0))
        p = {k: getattr(model.p, k) for k in ("f", "nsq", "L", "H", "U", "tdiab", "diff_order", "diff_efold")}
        p |= {k: getattr(model.p, k) for k in ("theta0", "g", "dt")}
        Path(work, "params.json").write_text(json.dumps({**p, "leads_h": list(leads_h)}))
        cmd = [args.python, __file__, "--child", "--sqgturb", args.sqgturb, "--work", work]
        subprocess.run([*cmd, "--precision", precision], check=True)
        return dict(np.load(Path(work, f"sqgturb-{precision}.npz")))


def write_golden(args, SQG, SQGParams, torch) -> None:
    """A small case for tests/test_sqg.py: N = 32, 20 days spun up by us, 0.5 K of grid noise added
    (it fills the Nyquist row and column), then 12 h by sqgturb in single precision."""
    model = SQG(SQGParams(N=32, jacobian="reference"))
    g = torch.Generator().manual_seed(0)
    x0 = model.step(model.initial_state(g, 1), 20 * 2 * model.steps_per_cycle)[0]
    x0 = x0 + 0.5 * torch.randn(x0.shape, generator=g)
    theirs = run_sqgturb(args, model, x0.numpy(), (12,), "single")
    np.savez_compressed(
        args.golden, start=x0.numpy(), after_12h=theirs["12"].astype(np.float32), numpy=theirs["numpy"]
    )
    print(f"wrote {args.golden}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sqgturb", required=True, help="a checkout of jswhit/sqgturb")
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs sqgturb (numpy ≥ 2)")
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--out", default="runs/compare_sqgturb.json")
    ap.add_argument("--golden", help="write the small test case (tests/data/sqgturb_n32.npz) instead")
    ap.add_argument("--precision", choices=("single", "double"), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _sqgturb(args)

    import torch

    from scoreda.dynamics.sqg import SQG, SQGParams

    if args.golden:
        return write_golden(args, SQG, SQGParams, torch)
    ref = SQG(SQGParams(N=args.N, jacobian="reference"))
    x0 = ref.step(ref.initial_state(torch.Generator().manual_seed(0), 1), 100 * 2 * ref.steps_per_cycle)
    theirs, double = (run_sqgturb(args, ref, x0[0].numpy(), LEADS_H, prec) for prec in ("single", "double"))
    numpy_version = str(theirs["numpy"])
    th_hat = ref.fft(x0)
    nyq = ref.to_grid(th_hat * (torch.arange(args.N) == args.N // 2)[:, None])
    jac = ref.tendency(th_hat) - (ref.theta_eq_hat - th_hat) / ref.p.tdiab
    state = {
        "nyquist_row_rms_K": float(nyq.pow(2).mean().sqrt()),
        "nyquist_row_share_of_jacobian": float(jac[..., args.N // 2, :].norm() / jac.norm()),
    }
    rows, ours, done = [], x0, 0
    for lead in LEADS_H:
        n = int(round(lead * 3600 / ref.dt)) - done
        ours, done = ref.step(ours, n), done + n
        a, b, c = ours[0].double().numpy(), theirs[str(lead)], double[str(lead)]
        rows.append(
            {
                "lead_h": lead,
                "rel_rms": float(np.linalg.norm(a - b) / np.linalg.norm(b)),
                "rms_K": float(np.sqrt(np.mean((a - b) ** 2))),
                "corr": float(np.corrcoef(a.ravel(), b.ravel())[0, 1]),
                "float32_floor_rel_rms": float(np.linalg.norm(b - c) / np.linalg.norm(c)),
            }
        )
    print(
        f"sqgturb (single precision, numpy {numpy_version}) vs scoreda jacobian=reference, N={args.N}, "
        f"dt={ref.dt:.0f} s, from one 100-day spin-up"
    )
    print(
        f"Nyquist row in that state: {state['nyquist_row_rms_K']:.3f} K RMS, "
        f"{100 * state['nyquist_row_share_of_jacobian']:.1f} % of the Jacobian's norm"
    )
    print(f"{'lead [h]':>8} {'rel RMS diff':>13} {'RMS diff [K]':>13} {'corr':>10} {'sqgturb 32 vs 64':>17}")
    for r in rows:
        print(
            f"{r['lead_h']:8d} {r['rel_rms']:13.2e} {r['rms_K']:13.2e} {r['corr']:10.7f} "
            f"{r['float32_floor_rel_rms']:17.2e}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"numpy": numpy_version, "N": args.N, "state": state, "leads": rows}, indent=1)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
