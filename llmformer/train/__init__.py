"""Training: `torchrun --nproc-per-node N -m llmformer.train CONFIG.json` (see llmformer/train/__main__.py)."""
