"""The prior-guided transformer decoder: Mask2Former's query decoder with LLMFormer's three modules.

Per layer, in order:
  semantic attention        queries cross-attend to the prior tokens (object + attribute embeddings);
                            its head-averaged map A (Q x K) also feeds the two modules below
  scaled visual attention   masked cross-attention to every pyramid level, summed with per-query level
                            scores that an MLP predicts from the query's attribute embedding (A @ attrs)
  relation attention        query self-attention with the bias A R A^T (Q x Q) from the relation graph R
  FFN
Each module can be switched off (config) for the paper's ablations: without semantic attention the
queries are not updated from the priors (A is still computed for the other two); without scaled visual
attention layer i attends to level i mod 3, as in Mask2Former; without relation attention the
self-attention has no bias.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmformer.layers import FFN, MASK_VALUE, MLP, Attention, sine_position_embedding
from llmformer.presets import SegmenterConfig

LEVELS = 3


class DecoderLayer(nn.Module):
    def __init__(self, cfg: SegmenterConfig):
        super().__init__()
        d = cfg.dim
        self.cfg = cfg
        self.semantic = Attention(d, cfg.heads)
        self.semantic_norm = nn.LayerNorm(d)
        self.visual = Attention(d, cfg.heads)
        self.visual_norm = nn.LayerNorm(d)
        if cfg.scaled_visual_attention:
            self.level_scores = MLP(d, d, LEVELS, 2)
        self.self_attn = Attention(d, cfg.heads)
        self.self_norm = nn.LayerNorm(d)
        if cfg.relation_attention:
            # One learned scale per head for the relation bias; starts at 1 so priors matter from step 0.
            self.relation_scale = nn.Parameter(torch.ones(cfg.heads))
        self.ffn = FFN(d, cfg.decoder_ffn)
        self.ffn_norm = nn.LayerNorm(d)

    def forward(
        self,
        q: torch.Tensor,                  # (B, Q, d)
        query_pos: torch.Tensor,          # (1, Q, d)
        priors: torch.Tensor,             # (B, 1+K, d): null token first, then the priors
        prior_bias: torch.Tensor,         # (B, 1, 1, 1+K): 0 where valid, MASK_VALUE where padded
        attributes: torch.Tensor,         # (B, K, d)
        relation: torch.Tensor,           # (B, K, K)
        memory: list[torch.Tensor],       # per level (B, S_l, d), low resolution first
        memory_pos: list[torch.Tensor],   # per level (1, S_l, d)
        masks: list[torch.Tensor],        # per level (B, 1, Q, S_l) additive attention masks
        index: int,
    ) -> torch.Tensor:
        cfg = self.cfg
        # Semantic attention. A over the real priors only (drop the null column).
        update, attn_map = self.semantic(q + query_pos, priors, priors, prior_bias)
        A = attn_map[:, :, 1:]                                                     # (B, Q, K)
        if cfg.semantic_attention:
            q = self.semantic_norm(q + update)

        # Scaled visual attention (or Mask2Former's one level per layer).
        if cfg.scaled_visual_attention:
            scores = self.level_scores(A @ attributes).softmax(-1)                # (B, Q, L)
            out = 0
            for lvl in range(LEVELS):
                o, _ = self.visual(q + query_pos, memory[lvl] + memory_pos[lvl], memory[lvl], masks[lvl])
                out = out + scores[..., lvl:lvl + 1] * o
        else:
            lvl = index % LEVELS
            out, _ = self.visual(q + query_pos, memory[lvl] + memory_pos[lvl], memory[lvl], masks[lvl])
        q = self.visual_norm(q + out)

        # Relation attention: the prior graph lifted to query level, A R A^T.
        bias = None
        if cfg.relation_attention:
            lifted = A @ relation @ A.transpose(1, 2)                             # (B, Q, Q)
            bias = self.relation_scale.view(1, -1, 1, 1) * lifted[:, None]         # (B, h, Q, Q)
        qk = q + query_pos
        out, _ = self.self_attn(qk, qk, q, bias)
        q = self.self_norm(q + out)
        return self.ffn_norm(q + self.ffn(q))


class PriorGuidedDecoder(nn.Module):
    """Learnable queries through `decoder_layers` layers; a prediction (mask and class embeddings) from
    the queries before the first layer and after every layer, as Mask2Former does, because each
    prediction's masks are the next layer's attention masks.

    Returns a list of (mask_logits (B, Q, h, w), class_logits (B, Q, V+1)), the last being the output."""

    def __init__(self, cfg: SegmenterConfig):
        super().__init__()
        d = cfg.dim
        self.cfg = cfg
        self.query_feat = nn.Parameter(torch.randn(cfg.queries, d) * 0.02)
        self.query_pos = nn.Parameter(torch.randn(cfg.queries, d) * 0.02)
        self.level_embed = nn.Parameter(torch.randn(LEVELS, d) * 0.02)
        self.null_prior = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.object_proj = nn.Linear(cfg.text_dim, d)
        self.attribute_proj = nn.Linear(cfg.text_dim, d)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(d)
        self.mask_embed = MLP(d, d, d, 3)
        self.class_embed = nn.Linear(d, cfg.text_dim)
        self.no_object = nn.Linear(d, 1)
        self.logit_scale = nn.Parameter(torch.tensor(2.6593))  # log(1/0.07), CLIP's initial temperature

    def predict(self, q: torch.Tensor, mask_features: torch.Tensor, vocab: torch.Tensor):
        q = self.norm(q)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(q), mask_features)      # (B, Q, h, w)
        cls = F.normalize(self.class_embed(q), dim=-1)                                 # (B, Q, E)
        sims = cls @ F.normalize(vocab, dim=-1).t() * self.logit_scale.exp()            # (B, Q, V)
        return masks, torch.cat([sims, self.no_object(q)], -1)                          # (B, Q, V+1)

    @staticmethod
    def attention_masks(mask_logits: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Mask2Former's masked attention: a query sees only where its current mask is > 0.5; a query
        whose mask is empty at a level sees everywhere (else its softmax row would be all masked)."""
        out = []
        for h, w in shapes:
            m = F.interpolate(mask_logits, size=(h, w), mode="bilinear", align_corners=False).flatten(2)
            blocked = m.sigmoid() < 0.5                                                # (B, Q, S)
            blocked = blocked & ~blocked.all(-1, keepdim=True)
            out.append((blocked.to(mask_logits.dtype) * MASK_VALUE)[:, None])          # (B, 1, Q, S)
        return out

    def forward(
        self,
        mask_features: torch.Tensor,          # (B, d, h, w)
        memory_maps: list[torch.Tensor],      # per level (B, d, h_l, w_l), low resolution first
        object_embeddings: torch.Tensor,      # (B, K, E)
        attribute_embeddings: torch.Tensor,   # (B, K, E)
        prior_valid: torch.Tensor,            # (B, K) 1 for a prior, 0 for padding
        relation_graph: torch.Tensor,         # (B, K, K)
        vocab: torch.Tensor,                  # (V, E)
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        B, d = mask_features.shape[:2]
        shapes = [(int(m.shape[2]), int(m.shape[3])) for m in memory_maps]
        memory = [m.flatten(2).transpose(1, 2) + self.level_embed[i] for i, m in enumerate(memory_maps)]
        memory_pos = [sine_position_embedding(h, w, d, m.device, m.dtype)[None] for (h, w), m in zip(shapes, memory)]

        valid = prior_valid.to(mask_features.dtype)
        attributes = self.attribute_proj(attribute_embeddings) * valid[..., None]            # (B, K, d)
        priors = self.object_proj(object_embeddings) + attributes                          # (B, K, d)
        priors = torch.cat([self.null_prior.expand(B, -1, -1), priors], 1)                 # (B, 1+K, d)
        keep = F.pad(valid, (1, 0), value=1.0)                                            # null is always valid
        prior_bias = ((1.0 - keep) * MASK_VALUE)[:, None, None, :]                         # (B, 1, 1, 1+K)
        # Padding rows and columns of R carry no relation.
        relation = relation_graph * valid[:, :, None] * valid[:, None, :]

        q = self.query_feat[None].expand(B, -1, -1)
        query_pos = self.query_pos[None]
        predictions = [self.predict(q, mask_features, vocab)]
        for i, layer in enumerate(self.layers):
            masks = self.attention_masks(predictions[-1][0], shapes)
            q = layer(q, query_pos, priors, prior_bias, attributes, relation, memory, memory_pos, masks, i)
            predictions.append(self.predict(q, mask_features, vocab))
        return predictions
