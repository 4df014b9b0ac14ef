"""Mask2Former's set loss for semantic segmentation: Hungarian matching of queries to the classes present
in each image, then classification cross-entropy (no-object down-weighted) and mask BCE + dice on the
matched queries, summed over every decoder layer (deep supervision).

Targets are per image: the class index of each segment (one segment per class present, the semantic
setting) and its binary mask at the mask logits' resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


@dataclass
class LossWeights:
    cls: float = 2.0
    mask: float = 5.0        # binary cross-entropy
    dice: float = 5.0
    no_object: float = 0.1   # weight of the "no object" class in the cross-entropy


@dataclass
class Target:
    classes: torch.Tensor    # (n,) int64 vocabulary indices
    masks: torch.Tensor      # (n, h, w) float in [0, 1] (soft at borders after downsampling)


def dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(Q, P) logits x (n, P) targets -> (Q, n) pairwise dice loss."""
    p = logits.sigmoid()
    num = 2 * p @ targets.T
    den = p.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (num + 1) / (den + 1)


def bce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(Q, P) x (n, P) -> (Q, n) pairwise mean binary cross-entropy."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[-1]


@torch.no_grad()
def match(mask_logits: torch.Tensor, class_logits: torch.Tensor, target: Target, w: LossWeights
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hungarian matching for one image: (query indices, target indices) minimising
    -w.cls * p(class) + w.mask * BCE + w.dice * dice."""
    if len(target.classes) == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty
    prob = class_logits.softmax(-1)[:, target.classes]                           # (Q, n)
    logits = mask_logits.flatten(1).float()
    masks = target.masks.flatten(1).float()
    cost = -w.cls * prob + w.mask * bce_cost(logits, masks) + w.dice * dice_cost(logits, masks)
    q, t = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(q, dtype=torch.int64), torch.as_tensor(t, dtype=torch.int64)


def layer_loss(mask_logits: torch.Tensor, class_logits: torch.Tensor, targets: list[Target], w: LossWeights
               ) -> dict[str, torch.Tensor]:
    """The three losses of one decoder layer's prediction for a batch: mask_logits (B, Q, h, w),
    class_logits (B, Q, V+1)."""
    B, Q, V1 = class_logits.shape
    no_object = V1 - 1
    cls_target = torch.full((B, Q), no_object, dtype=torch.int64)
    pred_masks, true_masks = [], []
    for b, target in enumerate(targets):
        qi, ti = match(mask_logits[b], class_logits[b], target, w)
        cls_target[b, qi] = target.classes[ti]
        pred_masks.append(mask_logits[b, qi])
        true_masks.append(target.masks[ti])
    weight = torch.ones(V1, dtype=class_logits.dtype)
    weight[no_object] = w.no_object
    loss_cls = F.cross_entropy(class_logits.transpose(1, 2), cls_target, weight=weight)
    pred = torch.cat(pred_masks).flatten(1)
    true = torch.cat(true_masks).flatten(1).to(pred.dtype)
    n = max(pred.shape[0], 1)
    if pred.shape[0] == 0:
        zero = mask_logits.sum() * 0.0
        return {"cls": loss_cls, "mask": zero, "dice": zero}
    loss_mask = F.binary_cross_entropy_with_logits(pred, true, reduction="none").mean(1).sum() / n
    p = pred.sigmoid()
    loss_dice = (1 - (2 * (p * true).sum(1) + 1) / (p.sum(1) + true.sum(1) + 1)).sum() / n
    return {"cls": loss_cls, "mask": loss_mask, "dice": loss_dice}


def set_criterion(predictions: list[tuple[torch.Tensor, torch.Tensor]], targets: list[Target], w: LossWeights
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of every layer's losses (deep supervision); also the last layer's terms, for logging."""
    total = 0.0
    last: dict[str, torch.Tensor] = {}
    for mask_logits, class_logits in predictions:
        last = layer_loss(mask_logits, class_logits, targets, w)
        total = total + w.cls * last["cls"] + w.mask * last["mask"] + w.dice * last["dice"]
    return total, {k: float(v.detach()) for k, v in last.items()}


def semantic_targets(labels: torch.Tensor, num_classes: int, size: tuple[int, int], ignore: int = 255) -> Target:
    """One segment per class present in a (H, W) label map, its mask area-downsampled to `size`
    (soft borders; ignored pixels count as background)."""
    present = [int(c) for c in torch.unique(labels) if int(c) != ignore and int(c) < num_classes]
    if not present:
        return Target(torch.zeros(0, dtype=torch.int64), torch.zeros(0, *size))
    classes = torch.tensor(present, dtype=torch.int64)
    onehot = (labels[None] == classes[:, None, None]).float()                  # (n, H, W)
    masks = F.adaptive_avg_pool2d(onehot[None], size)[0] if onehot.shape[-2:] != size else onehot
    return Target(classes, masks)
