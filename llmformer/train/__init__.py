"""Training: `torchrun --nproc-per-node N -m llmformer.train CONFIG.json` (see llmformer/train/__main__.py);
`bash llmformer/train/train_demo.sh` trains and ships the demo preset's weights."""
