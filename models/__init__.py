"""PyTorch source of truth for LLMFormer.

Importing this package imports nothing heavy: `models.names` and `models.presets` are torch-free so the
runtime can share tensor names and configs on a machine without PyTorch. Everything else imports torch.
"""
