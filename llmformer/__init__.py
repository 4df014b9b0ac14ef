"""PyTorch source of truth for LLMFormer.

Importing this package imports nothing heavy: `engines.contract` and `llmformer.presets` are torch-free so the
runtime can share tensor names and configs on a machine without PyTorch. Everything else imports torch.
"""
