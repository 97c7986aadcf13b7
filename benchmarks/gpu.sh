#!/usr/bin/env bash
# The benchmark set on a CUDA machine, within about 8 minutes, as one Markdown table file.
#
#   bash benchmarks/gpu.sh [OUT.md]      (run from the repository root, with zsad installed)
#
# Per method on the real ViT-L/14@336 architecture (random weights: timings do not depend on the values),
# 336 px, batch 8, 4 shots, in fp32 and bf16: ms/image, images/s, peak GPU memory, ratio to the bare
# backbone (interleaved repeats); then the backbones' fp32/bf16 throughput and exported-model timings
# with the CUDA execution provider.
set -euo pipefail
out=${1:-benchmarks-gpu.md}
py=${PYTHON:-python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gpu=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -n 1)
methods=knn,dictas,aprilgan,anomalyclip,moeclip,winclip,spg,dual-anchor
for precision in fp32 bf16; do
    timeout 170 "$py" benchmarks/methods.py --backbone clip-vit-l14-336 --weights random --image-size 336 \
        --batch-size 8 --shots 4 --repeats 5 --device cuda --precision "$precision" --no-train \
        --methods "$methods" --json "$work/$precision.json" > "$work/$precision.txt" 2>&1 \
        || echo "methods.py $precision did not finish: see $work/$precision.txt" >&2
done
timeout 90 "$py" benchmarks/backbones.py --random --device cuda --batch 16 --iters 10 > "$work/backbones.txt" 2>&1 || true
timeout 120 "$py" benchmarks/export.py --backbone clip-vit-l14-336 --weights random --image-size 336 \
    --methods knn,dictas --batch-size 8 > "$work/export.txt" 2>&1 || true
"$py" - "$work" "$out" "$gpu" <<'PY'
import json, sys, datetime
from pathlib import Path
work, out, gpu = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
lines = [f"## GPU benchmarks, {datetime.date.today()}, {gpu}", "",
         "ViT-L/14@336 architecture (random weights), 336 px, batch 8, 4 shots; ratio = method / bare backbone "
         "(median of interleaved rounds).", "",
         "| method | precision | ms/image | images/s | peak GPU MiB | ratio to backbone |", "|---|---|---:|---:|---:|---:|"]
for precision in ("fp32", "bf16"):
    path = work / f"{precision}.json"
    if not path.is_file():
        lines.append(f"| (all) | {precision} | did not finish | | | |")
        continue
    for name, row in json.loads(path.read_text()).items():
        peak = "" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        lines.append(f"| {name} | {precision} | {row['ms_per_image']:.1f} | {row['images_per_s']:.1f} | {peak} | "
                     f"{row['ratio']:.2f} ({row['ratio_min']:.2f}-{row['ratio_max']:.2f}) |")
for name in ("backbones", "export"):
    text = (work / f"{name}.txt").read_text() if (work / f"{name}.txt").is_file() else "(did not run)"
    lines += ["", f"### {name}", "", "```", text.strip(), "```"]
out.write_text("\n".join(lines) + "\n")
print(out.read_text())
PY
