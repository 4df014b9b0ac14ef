"""Train the vision tower, the segmenter or the captioner from a JSON config (see llmformer/train/config.py and
llmformer/train/configs/).

    torchrun --nproc-per-node 2 -m llmformer.train llmformer/train/configs/demo_segmenter.json [--steps N] [--out DIR]
    python -m llmformer.train CONFIG.json            # one process

gloo on CPU, NCCL on GPUs (one process per GPU). A run folder with train_state.safetensors resumes.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv=None) -> int:
    """The command: one `error: ...` line on stderr; exit status 2 for a wrong command line or config, 1 for a
    failed run (a data folder that cannot be read, a full disk); --debug shows the traceback
    (runtime/commands.py)."""
    from runtime.commands import run_command

    return run_command(_main, argv)


def _main(argv) -> int:
    from llmformer.train.config import TrainConfig
    from runtime.commands import CommandParser, UsageError, bounded

    ap = CommandParser(prog="python -m llmformer.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="a JSON run config")
    ap.add_argument("--steps", type=bounded(int, 1), default=None, help="override the config's steps (>= 1)")
    ap.add_argument("--out", default=None, help="override the config's run folder")
    ap.add_argument("--vision-tower", dest="vision_tower", default=None, help="override the config's vision_tower")
    args = ap.parse_args(argv)
    try:
        cfg = TrainConfig.load(args.config, steps=args.steps, out=args.out, vision_tower=args.vision_tower)
    except ValueError as exc:  # TrainConfig's: the file, the key and what is wrong
        raise UsageError(str(exc)) from exc
    if cfg.task == "tower":
        from llmformer.train.tower import main as run
    elif cfg.task == "segmenter":
        from llmformer.train.segmenter import main as run
    else:
        from llmformer.train.captioner import main as run
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
