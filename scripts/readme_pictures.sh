#!/usr/bin/env bash
# The README's picture of what the shipped bundle makes: the demo's four prompts (configs/demo_prompts.txt, seed 0,
# the bundle's sampling.json knobs), their contact sheets stacked under their prompts into docs/demo.png. Rerun it
# whenever checkpoints/shapes-tiny changes. Usage: bash scripts/readme_pictures.sh [BUNDLE]
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${1:-checkpoints/shapes-tiny}
.venv/bin/python sample.py --ckpt "$BUNDLE" --prompts configs/demo_prompts.txt --out outputs/readme --seed 0 --overwrite
.venv/bin/python - "$BUNDLE" <<'PY'
import json, sys
from pathlib import Path
from PIL import Image, ImageDraw

entries = json.loads(Path("outputs/readme/samples.json").read_text())["samples"]
sheets = [(entry["prompt"], Image.open(Path("outputs/readme") / entry["sheet"]).convert("RGB")) for entry in entries]
width = max(sheet.width for _, sheet in sheets)
label = 18  # pixels of caption line above each sheet
canvas = Image.new("RGB", (width, sum(sheet.height + label for _, sheet in sheets)), "white")
draw, top = ImageDraw.Draw(canvas), 0
for prompt, sheet in sheets:
    draw.text((4, top + 3), f'"{prompt}"     top row: the 5 key frames at 1 fps; below: all 33 frames at 8 fps, after 3 interpolation rounds', fill="black")
    canvas.paste(sheet, (0, top + label))
    top += sheet.height + label
canvas.save("docs/demo.png")
print(f"wrote docs/demo.png from {sys.argv[1]}")
PY
