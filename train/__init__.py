"""Training: `torchrun --nproc-per-node N -m train CONFIG.json` (see train/__main__.py)."""
