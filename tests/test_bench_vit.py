"""``scripts/bench_vit.py`` runs a 1-rank and a 2-rank (torchrun) case and writes sane numbers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scoreda.surrogate import count_parameters, flops_per_sample

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_vit_rows(tmp_path):
    out = tmp_path / "b.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_vit.py"), "--strategies", "zero2"]
    cmd += ["--ranks", "1,2", "--steps", "1", "--warmup", "1", "--out", str(out)]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["strategy"], r["ranks"]) for r in rows] == [("zero2", 1), ("zero2", 2)]
    for r in rows:
        assert r["params"] == 934_048 and r["tokens_per_sample"] == 256
        assert r["tokens_s"] == pytest.approx(256 * 8 / r["step_s"])
        assert r["step_s"] > 0 and 0 < r["mfu_vs_matmul"] < 5 and r["peak_mem_gib"] > 0.1
    tiny = {"img_size": 64, "channels": 2, "patch": 4, "embed_dim": 128, "depth": 4, "heads": 4}
    tiny |= {"mlp_ratio": 4, "drop_rate": 0, "drop_path": 0, "head_depth": 2}
    tiny |= {"level_aggregation": True, "residual": True}
    assert count_parameters(tiny) == 934_048
    assert flops_per_sample(tiny) == 6 * 256 * 934_048 + 12 * 4 * 256**2 * 128  # 6·N·params + attention
