#!/usr/bin/env bash
# Train the demo preset's weights from scratch on the synthetic scenes, on 2 CPU processes (gloo), and ship
# them into llmformer/weights/demo/ (what `python export/build_engines.py` builds the demo from).
#
#   bash llmformer/train/train_demo.sh [RUN_DIR] [NPROC]
#
# 1. the segmenter and the vision tower (llmformer/train/configs/demo_segmenter.json)
# 2. the captioner on that tower, frozen (llmformer/train/configs/demo_captioner.json)
# 3. llmformer.train.ship: copy the checkpoints and write llmformer/weights/demo/TRAINING.json (commands, seeds, metrics)
set -euo pipefail
RUN=${1:-runs/demo}
NPROC=${2:-2}
HERE=$(cd "$(dirname "$0")" && pwd)   # llmformer/train, in the repository or an installed package
start=$(date +%s)
python -m torch.distributed.run --nproc-per-node "$NPROC" -m llmformer.train "$HERE/configs/demo_segmenter.json" --out "$RUN/segmenter"
mid=$(date +%s)
python -m torch.distributed.run --nproc-per-node "$NPROC" -m llmformer.train "$HERE/configs/demo_captioner.json" --out "$RUN/captioner" \
    --vision-tower "$RUN/segmenter/vision_tower.safetensors"
end=$(date +%s)
python -m llmformer.train.ship "$RUN" "$HERE/../weights/demo" --seconds "$((mid - start))" "$((end - mid))"
