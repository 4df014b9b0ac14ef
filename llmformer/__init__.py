"""LLMFormer, the PyTorch side: the segmenter (ViT-Adapter, MSDA pixel decoder, prior-guided decoder), the
captioner and text-encoder loaders, presets, the shipped demo weights (`weights/demo/`), and two
subpackages: `llmformer.data` (synthetic scenes and the COCO-Stuff reader, torch-free) and
`llmformer.train` (`torchrun -m llmformer.train CONFIG`).

The one package named after the model: everything that is not the deployment layout (export, engines,
runtime, calibration, plugins_trt) lives here, so a user's own `models/`, `data/` or `train/` never clashes
with ours. Importing it imports nothing heavy; `llmformer.presets` and `llmformer.data` are torch-free,
everything else imports torch. Tensor names and the artifact manifest are the deployment side's
(`engines.contract`): the exporters take them from there, and `runtime/` never imports this package.
"""
