#!/usr/bin/env bash
# Train the demo preset's weights from scratch on the synthetic scenes, on 2 CPU processes (gloo), and ship
# them into llmformer/weights/demo/ (what `python export/build_engines.py` builds the demo from).
#
#   bash llmformer/train/train_demo.sh [RUN_DIR] [NPROC]
#
# 1. the vision tower: which class is in each of its cells (llmformer/train/configs/demo_tower.json)
# 2. the captioner on that tower, frozen (llmformer/train/configs/demo_captioner.json)
# 3. the segmenter on that tower, frozen (llmformer/train/configs/demo_segmenter.json): one tower pass feeds both
# 4. llmformer.train.ship: copy the checkpoints and write llmformer/weights/demo/TRAINING.json (commands, seeds, metrics)
set -euo pipefail
RUN=${1:-runs/demo}
NPROC=${2:-2}
HERE=$(cd "$(dirname "$0")" && pwd)   # llmformer/train, in the repository or an installed package
TOWER="$RUN/tower/vision_tower.safetensors"
run() { python -m torch.distributed.run --nproc-per-node "$NPROC" -m llmformer.train "$@"; }
t0=$(date +%s)
run "$HERE/configs/demo_tower.json" --out "$RUN/tower"
t1=$(date +%s)
run "$HERE/configs/demo_captioner.json" --out "$RUN/captioner" --vision-tower "$TOWER"
t2=$(date +%s)
run "$HERE/configs/demo_segmenter.json" --out "$RUN/segmenter" --vision-tower "$TOWER"
t3=$(date +%s)
python -m llmformer.train.ship "$RUN" "$HERE/../weights/demo" --seconds "$((t1 - t0))" "$((t2 - t1))" "$((t3 - t2))"
