"""Write synthetic scenes to a folder that the torch-free `runtime.evaluate` reads (it may not import
this package, so the scenes reach it as files, the way a user's own evaluation set would).

    python -m llmformer.data.scene_folder scenes/val --split val --scenes 100
    python -m runtime.evaluate artifacts/demo --data scenes/val scenes/heldout

The layout is `runtime.evaluate`'s scene folder (its docstring is the reference): `scenes.json` and one
image and one label PNG per scene.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2

from llmformer.data.synthetic import IGNORE, SPLITS, SyntheticScenes

SCENES_FILE = "scenes.json"
FORMAT = "llmformer-edge/scenes"


def write_scene_folder(folder: str | Path, split: str, count: int, size: int = 256, seed: int = 0) -> Path:
    """Write `count` scenes of `split` (make_scene(split, i, size, seed), i = 0..count-1) into `folder`."""
    folder = Path(folder)
    if (folder / SCENES_FILE).exists():
        raise FileExistsError(f"{folder / SCENES_FILE} exists: choose an empty folder or remove it first")
    data = SyntheticScenes(split, count, size=size, seed=seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    records = []
    for i in range(len(data)):
        scene = data[i]
        image, labels = f"images/{i:06d}.png", f"labels/{i:06d}.png"
        cv2.imwrite(str(folder / image), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(folder / labels), scene.labels)
        records.append({"image": image, "labels": labels, "caption": scene.caption,
                        "canonical_caption": scene.canonical_caption, "objects": scene.names})
    meta = {"format": FORMAT, "version": 1, "split": split, "classes": list(data.classes), "ignore": IGNORE,
            "source": {"generator": "llmformer.data.synthetic", "size": size, "seed": seed}, "scenes": records}
    (folder / SCENES_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return folder


def main(argv=None) -> int:
    """The command: one `error: ...` line on stderr; exit status 2 for a wrong command line or a folder that
    already holds scenes, 1 for a failed run (a full disk); --debug shows the traceback (runtime/commands.py)."""
    from runtime.commands import run_command

    return run_command(_main, argv, usage=(FileExistsError,))


def _main(argv) -> int:
    from runtime.commands import CommandParser, bounded, output_folder

    ap = CommandParser(prog="python -m llmformer.data.scene_folder", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=output_folder, help="folder to write (created; must not hold a scenes.json)")
    ap.add_argument("--split", default="val", choices=SPLITS)
    ap.add_argument("--scenes", type=bounded(int, 1), default=100, help="scenes to write, >= 1")
    ap.add_argument("--size", type=bounded(int, 64), default=256, help="scene side in pixels, >= 64")
    ap.add_argument("--seed", type=bounded(int, 0), default=0, help="scene seed, >= 0 (the demo's training used 0)")
    args = ap.parse_args(argv)
    write_scene_folder(args.out, args.split, args.scenes, args.size, args.seed)
    print(f"wrote {args.scenes} {args.split} scenes to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
