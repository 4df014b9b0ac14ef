"""Train the tiny LLaVA-architecture captioner on the scenes' canonical captions.

    torchrun --nproc-per-node 2 -m llmformer.train llmformer/train/configs/demo_captioner.json

The vision tower is the preset's random one, or `vision_tower` (a vision_tower.safetensors); with
`train_tower` the caption loss also trains the tower blocks it reaches (up to LLaVA's feature layer, -2:
every block but the last; the demo keeps the segmenter run's tower frozen, since one tower pass feeds both
at deployment). The projector and the Phi-architecture LM are trained with next-token cross-entropy on the
answer, in the exact prompt the runtime sends ("{system} USER: <image> x N\\n{question} ASSISTANT:"), the
tokens that spell a class name weighted by `name_weight` (the rest of a caption, templates, sizes and the
background, is learned first and would otherwise dominate the loss). A byte-level BPE tokenizer is fitted
to the training captions (and the prompt). Writes OUT/captioner/ (transformers' native
LLaVA format + tokenizer.json + prompt_format.json, what `build_engines.py --captioner` reads),
OUT/vision_tower.safetensors (its tower in the project's checkpoint format, for a segmenter run to start
from), OUT/train_state.safetensors, OUT/log.jsonl, OUT/metrics.json. Evaluation: greedy captions of 50
validation scenes, exact match and object-prior F1 (as runtime.evaluate scores a build).
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from llmformer.captioner import LLAVA_PHI_PROMPT, build_random_llava, build_tiny_tokenizer, save_captioner, tiny_phi_config
from llmformer.checkpoint import save_component
from llmformer.data.captions import plural
from llmformer.presets import get_preset
from llmformer.vision_tower import VisionTower
from runtime.decode import PromptFormat
from runtime.evaluate import object_f1
from runtime.nlp import load_nlp
from runtime.priors import parse
from llmformer.train.common import (STATE_FILE, Dist, Logger, due, fused_attention, optimizer_step, prepare_run,
                                    rank_batch, resume, save_state, seed_everything, set_threads, start_tower,
                                    tower_pixels, train_tower_through)
from llmformer.train.config import TrainConfig
from llmformer.train.data import open_split

CAPTIONER_DIR = "captioner"
IGNORE_INDEX = -100


class PromptBuilder:
    """Token ids of prompt + answer, as the runtime's CaptionDecoder builds the prompt, and each answer token's
    loss weight: `name_weight` for the tokens that spell one of `names` (a class name or its plural, as the
    captions count objects), 1 for the rest."""

    def __init__(self, tokenizer, image_tokens: int, names: Iterable[str] = (), name_weight: float = 1.0):
        self.tok = tokenizer.backend_tokenizer          # the `tokenizers` object the runtime uses
        self.names = {w for n in names for w in (n.lower(), plural(n.lower()))}
        self.name_weight = float(name_weight)
        self.prompt = PromptFormat.from_json(LLAVA_PHI_PROMPT)
        self.image_id = self.tok.token_to_id(self.prompt.image_token)
        self.eos_id = self.tok.token_to_id(self.prompt.stop_tokens[0])
        ids = self.tok.encode(self.prompt.render(self.prompt.default_question)).ids
        at = ids.index(self.image_id)
        self.prompt_ids = ids[:at] + [self.image_id] * image_tokens + ids[at + 1:]

    def answer(self, caption: str) -> tuple[list[int], list[float]]:
        """The answer's token ids (eos last) and their loss weights."""
        text = " " + caption.strip()
        enc = self.tok.encode(text)
        spans = [m.span() for m in re.finditer(r"[A-Za-z]+", text) if m.group().lower() in self.names]
        weights = [self.name_weight if any(s < we and e > ws for ws, we in spans) else 1.0 for s, e in enc.offsets]
        return enc.ids + [self.eos_id], weights + [1.0]

    def batch(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """input_ids, attention_mask, labels (-100 on the prompt and padding), loss weights (0 where no label),
        right-padded."""
        answers = [self.answer(c) for c in captions]
        P, L = len(self.prompt_ids), len(self.prompt_ids) + max(len(a) for a, _ in answers)
        ids = torch.full((len(captions), L), self.eos_id, dtype=torch.int64)
        mask = torch.zeros((len(captions), L), dtype=torch.int64)
        labels = torch.full((len(captions), L), IGNORE_INDEX, dtype=torch.int64)
        weights = torch.zeros((len(captions), L))
        for b, (a, w) in enumerate(answers):
            ids[b, :P + len(a)] = torch.tensor(self.prompt_ids + a)
            mask[b, :P + len(a)] = 1
            labels[b, P:P + len(a)] = torch.tensor(a)
            weights[b, P:P + len(a)] = torch.tensor(w)
        return ids, mask, labels, weights


def caption_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, each label weighted (with every weight 1: transformers' own LLaVA loss)."""
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), reduction="none",
                         ignore_index=IGNORE_INDEX)
    w = weights[:, 1:].flatten()
    return (ce * w).sum() / w.sum().clamp_min(1e-6)


def build(cfg: TrainConfig, train_set):
    preset = get_preset(cfg.preset)
    corpus = [train_set[i].canonical_caption for i in range(min(len(train_set), 4000))]
    tokenizer = build_tiny_tokenizer(cfg.tokenizer_vocab, corpus=corpus)
    text = tiny_phi_config(len(tokenizer.get_vocab()), **{"initializer_range": 0.02, **cfg.captioner_text})
    llava = build_random_llava(preset.vision_tower, text, tokenizer, seed=cfg.seed)
    if cfg.vision_tower:
        llava.model.vision_tower.load_state_dict(start_tower(cfg, preset).model.state_dict(), strict=True)
    fused_attention(llava.model.vision_tower)      # the Phi LM gains nothing from it here (measured): left eager
    train_tower_through(llava.model.vision_tower, llava.config.vision_feature_layer, cfg.train_tower)
    return preset, llava, tokenizer


@torch.no_grad()
def caption_scores(llava, builder: PromptBuilder, preset, scenes, max_new_tokens: int, nlp) -> dict:
    """Greedy captions (transformers' generate) of `scenes`: exact match against their canonical captions
    and object-prior F1 (the runtime's parser on the caption vs the scene's object names, as
    runtime.evaluate scores a build)."""
    llava.eval()
    hits, examples, parsed, truth = 0, [], [], []
    for i in range(len(scenes)):
        scene = scenes[i]
        pixels = tower_pixels([scene.image], preset)
        ids = torch.tensor([builder.prompt_ids])
        out = llava.generate(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids),
                             max_new_tokens=max_new_tokens, do_sample=False)
        text = builder.tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True).strip()
        hits += text == scene.canonical_caption.strip()
        parsed.append(parse(text, nlp=nlp).names)
        truth.append(scene.names)
        if len(examples) < 3:
            examples.append({"caption": text, "truth": scene.canonical_caption})
    llava.train()
    return {"exact_match": hits / max(len(scenes), 1) * 100, "object_f1": object_f1(parsed, truth),
            "examples": examples}


def main(cfg: TrainConfig) -> dict:
    d = Dist()
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    out = prepare_run(cfg, d.main)
    train_set = open_split(cfg.dataset, "train", get_preset(cfg.preset).segmenter.frame_size)
    preset, llava, tokenizer = build(cfg, train_set)
    llava.train()
    builder = PromptBuilder(tokenizer, preset.vision_tower.grid ** 2, train_set.classes, cfg.name_weight)
    params = [p for p in llava.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, state_path = resume(out, llava, optimizer, d), out / STATE_FILE
    ddp = DistributedDataParallel(llava) if d.world > 1 else llava
    log = Logger(out, cfg, d.main, start)
    val_set = open_split(cfg.dataset, "val", preset.segmenter.frame_size) if d.main else None
    global_batch = cfg.batch_size * d.world
    metrics: dict = {}
    nlp = load_nlp() if d.main else None
    for step in range(start, cfg.steps):
        items = rank_batch(train_set, step, cfg.batch_size, d)
        pixels = tower_pixels([it.image for it in items], preset)
        ids, mask, labels, weights = builder.batch([it.canonical_caption for it in items])
        logits = ddp(input_ids=ids.to(d.device), pixel_values=pixels.to(d.device),
                     attention_mask=mask.to(d.device)).logits
        labels, weights = labels.to(d.device), weights.to(d.device)
        loss = caption_loss(logits, labels, weights)
        optimizer_step(optimizer, params, loss, step, cfg)
        if (step + 1) % cfg.log_every == 0 or step == start:
            nll = caption_loss(logits.detach(), labels, (weights > 0).float())    # nats/token, every token alike
            log(step, d.mean({"loss": float(loss.detach()), "nll": float(nll)})
                | {"lr": optimizer.param_groups[0]["lr"]})
        if d.main and due(step, cfg.ckpt_every, cfg.steps):
            save_state(state_path, llava, optimizer, step + 1)
        if d.main and due(step, cfg.eval_every, cfg.steps):
            t0 = time.perf_counter()
            n = min(len(val_set), 50)
            metrics = caption_scores(llava, builder, preset, [val_set[i] for i in range(n)], cfg.max_new_tokens, nlp)
            log(step, {"val_exact_match": metrics["exact_match"], "val_object_f1": metrics["object_f1"],
                       "eval_s": time.perf_counter() - t0}, kind="eval")
        d.barrier()
    if d.main:
        save_captioner(llava.eval(), tokenizer, out / CAPTIONER_DIR)
        save_component(VisionTower(llava.model.vision_tower, preset.vision_tower.feature_layers),
                       out / "vision_tower.safetensors")
        (out / "metrics.json").write_text(json.dumps({"steps": cfg.steps, "world_size": d.world,
                                                      "global_batch": global_batch, "val": metrics}, indent=2) + "\n")
    d.close()
    return metrics
