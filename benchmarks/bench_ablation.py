"""The paper's ablation on the synthetic scenes: the segmenter trained with each prior-guided attention
module switched off, all with the same budget, compared on the validation split (PyTorch, priors from the
scenes' captions, the split's class names as the vocabulary).

    python benchmarks/bench_ablation.py [--steps 200] [--nproc 2] [--work runs/ablation] [--vision-tower PATH]
                                        [--seeds 0 1]

Each variant is a real training run of the demo preset (llmformer/train/configs/demo_segmenter.json with
`segmenter_overrides` and `--steps`), from the same seed, data order and schedule, on the tower stage's tower
(frozen, as the demo recipe trains it: `--vision-tower`, default the config's runs/demo_tower/...). With several
`--seeds` every variant runs once per seed (the seed sets the segmenter's initialisation and its caption noise;
the scenes stay the same); the table gives each seed's mIoU and the mean, and the delta of the means.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine  # noqa: E402

VARIANTS = {
    "all three modules": {},
    "no semantic attention": {"semantic_attention": False},
    "no scaled visual attention": {"scaled_visual_attention": False},
    "no relation attention": {"relation_attention": False},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "ablation")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--vision-tower", type=Path, default=None,
                    help="the tower stage's vision_tower.safetensors (default: the config's)")
    args = ap.parse_args(argv)
    base = json.loads((ROOT / "llmformer" / "train" / "configs" / "demo_segmenter.json").read_text())
    tower = args.vision_tower or ROOT / base["vision_tower"]
    if not Path(tower).is_file():
        print(f"error: no tower at {tower}: run the tower stage first (torchrun --nproc-per-node 2 -m llmformer.train "
              f"llmformer/train/configs/demo_tower.json) or pass --vision-tower", file=sys.stderr)
        return 2
    base["vision_tower"] = str(Path(tower).resolve())
    print(f"machine: {machine()}; demo preset, {args.steps} steps x {base['batch_size']} x {args.nproc} processes",
          flush=True)
    results: dict[str, list[dict]] = {}
    for name in args.variants:
        for seed in args.seeds:
            out = args.work / (name.replace(" ", "_") + (f"_seed{seed}" if seed else ""))
            cfg = {**base, "out": str(out), "seed": seed, "steps": args.steps, "eval_every": 0,
                   "ckpt_every": args.steps, "warmup_steps": min(base["warmup_steps"], args.steps // 10),
                   "segmenter_overrides": VARIANTS[name]}
            path = args.work / f"{out.name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cfg, indent=2))
            if not (out / "metrics.json").is_file():
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.nproc),
                                "-m", "llmformer.train", str(path)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
                print(f"trained '{name}' (seed {seed}) in {time.perf_counter() - t0:.0f} s", flush=True)
            results.setdefault(name, []).append(json.loads((out / "metrics.json").read_text())["val"])
    print(f"\nvalidation split ({base['dataset']['val_length']} scenes), PyTorch FP32, {args.steps} steps each, "
          f"seeds {args.seeds}")
    seeds = "".join(f"{f'seed {s}':>9}" for s in args.seeds)
    print(f"{'variant':<28}{seeds}{'mIoU':>8}{'pixel acc':>11}{'Δ mIoU':>9}")
    mean = {name: sum(r["miou"] for r in runs) / len(runs) for name, runs in results.items()}
    ref = mean.get("all three modules")
    for name, runs in results.items():
        each = "".join(f"{r['miou']:9.2f}" for r in runs)
        acc = sum(r["pixel_accuracy"] for r in runs) / len(runs)
        delta = f"{mean[name] - ref:+9.2f}" if ref is not None else ""
        print(f"{name:<28}{each}{mean[name]:8.2f}{acc:11.2f}{delta}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
