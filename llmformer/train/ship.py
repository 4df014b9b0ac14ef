"""Ship a finished demo training run into the package: the checkpoints the demo preset builds from, and a
record of how they were made.

    python -m llmformer.train.ship RUN_DIR llmformer/weights/demo [--seconds TOWER_S CAPTIONER_S SEGMENTER_S]

Copies RUN_DIR/segmenter/segmenter.safetensors and RUN_DIR/captioner/captioner/ (transformers' LLaVA
format; its vision tower is RUN_DIR/tower's, which the segmenter was trained on, frozen: checked here) and
writes TRAINING.json beside them: the command, every stage's run config (seeds included), final metrics,
durations, machine and commit.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

COMMAND = "bash llmformer/train/train_demo.sh runs/demo 2"
STAGES = ("tower", "captioner", "segmenter")   # in the order train_demo.sh runs them


def tower_mismatch(runs: dict) -> str | None:
    """Where the captioner's or the segmenter's tower differs from the tower stage's (None: they are one)."""
    from llmformer.captioner import load_captioner
    from llmformer.checkpoint import load_component

    tower = load_component(runs["tower"] / "vision_tower.safetensors").model.state_dict()
    others = {"captioner": load_captioner(runs["captioner"] / "captioner").model.model.vision_tower.state_dict(),
              "segmenter": load_component(runs["segmenter"] / "vision_tower.safetensors").model.state_dict()}
    for name, state in others.items():
        differ = [k for k in tower if k not in state or not state[k].equal(tower[k])]
        if differ:
            return f"the {name} run's tower differs from the tower stage's at {differ[0]}"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--seconds", type=float, nargs=len(STAGES), default=None, metavar=tuple(s.upper() for s in STAGES))
    args = ap.parse_args(argv)
    runs = {stage: args.run / stage for stage in STAGES}
    for need in (runs["tower"] / "vision_tower.safetensors", runs["segmenter"] / "segmenter.safetensors",
                 runs["captioner"] / "captioner" / "config.json", *(r / "metrics.json" for r in runs.values())):
        if not need.exists():
            print(f"error: {need} is missing: run every training stage first ({COMMAND})", file=sys.stderr)
            return 2
    mismatch = tower_mismatch(runs)
    if mismatch:
        print(f"error: {mismatch}: the captioner and the segmenter must read the tower stage's tower", file=sys.stderr)
        return 2
    args.dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(runs["segmenter"] / "segmenter.safetensors", args.dest / "segmenter.safetensors")
    if (args.dest / "captioner").exists():
        shutil.rmtree(args.dest / "captioner")
    shutil.copytree(runs["captioner"] / "captioner", args.dest / "captioner")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    import torch

    from runtime.profiling import machine

    record = {
        "command": COMMAND,
        "date": _dt.date.today().isoformat(),
        "machine": machine(),
        "torch": torch.__version__,
        "commit": commit,
        "seconds": dict(zip(STAGES, args.seconds)) if args.seconds else None,
        **{stage: {"config": json.loads((run / "config.json").read_text()),
                   "metrics": json.loads((run / "metrics.json").read_text())} for stage, run in runs.items()},
    }
    (args.dest / "TRAINING.json").write_text(json.dumps(record, indent=2) + "\n")
    val = {stage: record[stage]["metrics"]["val"] for stage in STAGES}
    print(f"shipped {args.run} -> {args.dest}: tower val object accuracy "
          f"{val['tower'].get('object_accuracy', float('nan')):.1f}%, caption object F1 "
          f"{val['captioner'].get('object_f1', float('nan')):.1f}, segmenter val mIoU "
          f"{val['segmenter'].get('miou', float('nan')):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
