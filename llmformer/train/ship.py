"""Ship a finished demo training run into the package: the checkpoints the demo preset builds from, and a
record of how they were made.

    python -m llmformer.train.ship RUN_DIR llmformer/weights/demo [--seconds SEGMENTER_S CAPTIONER_S]

Copies RUN_DIR/segmenter/segmenter.safetensors and RUN_DIR/captioner/captioner/ (transformers' LLaVA
format; its vision tower is the one trained with the segmenter) and writes TRAINING.json beside them:
the command, both run configs (seeds included), final metrics, durations, machine and commit.
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--seconds", type=float, nargs=2, default=None, metavar=("SEGMENTER", "CAPTIONER"))
    args = ap.parse_args(argv)
    seg, cap = args.run / "segmenter", args.run / "captioner"
    for need in (seg / "segmenter.safetensors", seg / "metrics.json", cap / "captioner" / "config.json",
                 cap / "metrics.json"):
        if not need.exists():
            print(f"error: {need} is missing: run both training stages first ({COMMAND})", file=sys.stderr)
            return 2
    args.dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(seg / "segmenter.safetensors", args.dest / "segmenter.safetensors")
    if (args.dest / "captioner").exists():
        shutil.rmtree(args.dest / "captioner")
    shutil.copytree(cap / "captioner", args.dest / "captioner")
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
        "seconds": dict(zip(("segmenter", "captioner"), args.seconds)) if args.seconds else None,
        "segmenter": {"config": json.loads((seg / "config.json").read_text()),
                      "metrics": json.loads((seg / "metrics.json").read_text())},
        "captioner": {"config": json.loads((cap / "config.json").read_text()),
                      "metrics": json.loads((cap / "metrics.json").read_text())},
    }
    (args.dest / "TRAINING.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"shipped {args.run} -> {args.dest}: segmenter val mIoU "
          f"{record['segmenter']['metrics']['val'].get('miou', float('nan')):.2f}, caption exact match "
          f"{record['captioner']['metrics']['val'].get('exact_match', float('nan')):.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
