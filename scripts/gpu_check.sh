#!/usr/bin/env bash
# One GPU check (issue 19, item 6): the GPU rows of every benchmark in one go, ≤ 8 minutes on one
# H100/H200-class device, then one JSON and one markdown table for docs/results.md.
#
#   scripts/gpu_check.sh [OUT_DIR]            (default runs/bench/gpu_check; PY=python to override)
#
# Rows: the EnSF at d = 10⁶, M = 20, 100 steps with kernel=torch and kernel=fused (paired; fused
# mixture), the LETKF and the LEnSF on SQG 64² and 256² (scripts/bench_filters.py --gpu); the SQG
# forecast at 256² (scripts/bench_forecast.py --gpu); the ViT presets vit_64 and vit_128 in bf16
# with flash attention (scripts/bench_vit.py --gpu; goal ≥ 400 TFLOP/s for vit_128). Each benchmark
# has its own time limit, so one that hangs cannot take the others' time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-runs/bench/gpu_check}
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else
  "gpu_check.sh: no CUDA device (torch.cuda.is_available() is False)")'
mkdir -p "$OUT"
export WANDB_MODE=offline PYTHONUNBUFFERED=1
run() {  # name, limit in seconds, command...
  local name=$1 limit=$2
  shift 2
  echo "== $name (≤ ${limit} s)" >&2
  if ! timeout "$limit" "$@" > "$OUT/$name.txt" 2> "$OUT/$name.err"; then
    echo "gpu_check.sh: $name failed or ran over ${limit} s; see $OUT/$name.err" >&2
  fi
}
run filters 210 "$PY" scripts/bench_filters.py --gpu --repeats 3 --out "$OUT/filters.json"
run forecast 60 "$PY" scripts/bench_forecast.py --gpu --out "$OUT/forecast.json"
run vit 180 "$PY" scripts/bench_vit.py --gpu --presets vit_64,vit_128 --steps 5 --warmup 2 \
  --out "$OUT/vit.json"
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
merged, md = {}, [f"# GPU check ({out})", ""]
for name in ("filters", "forecast", "vit"):
    js, txt = out / f"{name}.json", out / f"{name}.txt"
    merged[name] = json.loads(js.read_text()) if js.is_file() else {"error": (out / f"{name}.err").read_text()[-2000:]}
    md += [f"## {name}", "", "```", txt.read_text().strip() if txt.is_file() else "(no output)", "```", ""]
(out / "gpu_check.json").write_text(json.dumps(merged, indent=1))
(out / "gpu_check.md").write_text("\n".join(md))
print("\n".join(md))
print(f"wrote {out}/gpu_check.json and gpu_check.md", file=sys.stderr)
PYEOF
