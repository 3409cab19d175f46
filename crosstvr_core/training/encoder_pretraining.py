"""Image-text contrastive pretraining of the embedded encoder on generated stills, then frozen.

The analogue of CLIP for a machine that cannot download CLIP: the tiny open_clip model learns
what one frame shows (pretraining_stills) with open_clip's own contrastive loss (`ClipLoss`),
its learnable temperature and open_clip_train's warm-up + cosine schedule. The result is a
plain open_clip state dict, loaded by the index exactly as real weights are
(`encoder.pretrained=<checkpoint>`), and never updated downstream.

The checkpoint's file name carries a hash of everything that determines it (model config,
pretraining config, the excluded test scenes), so a machine pays for it once and an edited
config never reads stale weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.loss import ClipLoss
from open_clip.transformer import text_global_pool
from open_clip_train.scheduler import cosine_lr
from tqdm.auto import tqdm

from crosstvr_core.config import STILLS_PRETRAINED, CrossTVRConfig, PretrainConfig
from crosstvr_core.models.encoder import (
    EncoderError,
    image_size,
    random_init_checkpoint,
    register_bundled_model_configs,
)
from crosstvr_core.synthetic.scenes import COLOURS, REGIONS, make_benchmark_specs
from crosstvr_core.synthetic.stills import generate_stills

StepCallback = Callable[[int, dict], None]
# bumped when the pretraining code changes what a config produces (part of the cache key)
RECIPE_VERSION = 2
# pretraining options added after RECIPE_VERSION 2, which change nothing when 0
_LATER_OPTIONS = ("moved_pairs", "pair_loss")


def excluded_test_scenes(num_test_groups: int, seed: int) -> frozenset:
    """Contents of the generated benchmark's test scenes: what pretraining must never show."""
    return frozenset(spec.content for spec in make_benchmark_specs(0, num_test_groups, seed))


def checkpoint_path(weights_dir: str | Path, model_name: str, cfg: PretrainConfig,
                    excluded_key: str) -> Path:
    """Where the pretrained checkpoint of (model config, pretraining config, excluded test
    scenes) lives: the same inputs give the same path, so it is computed once per machine."""
    register_bundled_model_configs()
    pretrain = cfg.model_dump()
    for name in _LATER_OPTIONS:  # off, they leave the checkpoint where it was before them
        if not pretrain[name]:
            del pretrain[name]
    key = json.dumps({"recipe": RECIPE_VERSION, "model": open_clip.get_model_config(model_name),
                      "pretrain": pretrain, "excluded": excluded_key},
                     sort_keys=True).encode()
    digest = hashlib.sha256(key).hexdigest()[:10]
    return Path(weights_dir) / f"{model_name}-stills-{digest}.pt"


def excluded_key(cfg: CrossTVRConfig) -> str:
    """Which test scenes pretraining leaves out: the generated benchmark's of this config."""
    return f"generated-test:seed={cfg.data.seed}:groups={cfg.data.num_test_groups}"


def stills_checkpoint(cfg: CrossTVRConfig) -> Path:
    """The stills-pretrained checkpoint this config asks for (it may not exist yet)."""
    return checkpoint_path(cfg.home_path / "weights", cfg.encoder.name, cfg.pretrain,
                           excluded_key(cfg))


def resolve_pretrained(cfg: CrossTVRConfig) -> str | None:
    """encoder.pretrained as open_clip takes it: "stills" becomes its checkpoint file, which
    must exist (the crosstvr-pretrain flow makes it); tags, paths and None pass through."""
    if cfg.encoder.pretrained != STILLS_PRETRAINED:
        return cfg.encoder.pretrained
    path = stills_checkpoint(cfg)
    if not path.is_file():
        raise EncoderError(
            f"encoder '{cfg.encoder.name}': pretrained={STILLS_PRETRAINED!r} needs the "
            f"checkpoint {path}, which does not exist yet: run `crosstvr pretrain` (or the "
            "crosstvr-pretrain/encoder deployment) with the same config first")
    return str(path)


def resolve_text_tokens(cfg: CrossTVRConfig) -> str:
    """encoder.text_tokens with "auto" decided: the stills encoder's token cache reads the
    text tower's input embeddings (its last layer keeps colour but barely tells regions or
    directions apart), every other encoder its last layer, as CrossTVR does with CLIP."""
    if cfg.encoder.text_tokens != "auto":
        return cfg.encoder.text_tokens
    return "embedding" if cfg.encoder.pretrained == STILLS_PRETRAINED else "last"


@dataclass
class StillsData:
    """Pre-rendered stills: uint8 frames [N, S, S, 3] and their token ids [N, context]."""

    images: torch.Tensor
    tokens: torch.Tensor
    captions: list[str]

    def pairs_that_differ(self) -> torch.Tensor:
        """[N // 2] bool: whether stills 2i and 2i+1 (one scene's pair) show different
        things, by their captions' (colour, region) of each object."""
        shown = [tuple(sorted(_PHRASE.findall(c))) for c in self.captions]
        return torch.tensor([shown[2 * i] != shown[2 * i + 1]
                             for i in range(len(shown) // 2)], dtype=torch.bool)


# an object phrase of a still caption: "a <size> <colour> <shape words> in the <region>"
_PHRASE = re.compile(r"\ba \w+ (\w+) [\w ]+? in the ([\w ]+?)(?= and | on a |$)")


def pair_contrast_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
                       differ: torch.Tensor) -> torch.Tensor:
    """ClipLoss's symmetric cross-entropy within each scene's pair: unit features [2P, D]
    (rows 2i, 2i+1 one pair), over the pairs where `differ` [P]; 0 when none does. In a
    batch of 128 the pair partner is one negative of 127, and colours alone settle the
    rest: this term is where the encoder must read what the pair tells apart."""
    if not bool(differ.any()):
        return image.sum() * 0.0
    i = image.unflatten(0, (-1, 2))[differ]  # [P, 2, D]
    t = text.unflatten(0, (-1, 2))[differ]
    logits = scale * torch.einsum("pad,pbd->pab", i, t)  # [P, 2 images, 2 captions]
    labels = torch.arange(2, device=image.device).expand(len(i), 2)
    ce = torch.nn.functional.cross_entropy
    return (ce(logits.flatten(0, 1), labels.flatten())
            + ce(logits.transpose(1, 2).flatten(0, 1), labels.flatten())) / 2


def build_stills(count: int, frame_size: int, tokenizer, seed: int,
                 excluded: frozenset, moved_pairs: float = 0.0) -> StillsData:
    images, captions = [], []
    for image, text in generate_stills(count, frame_size, seed, excluded, moved_pairs):
        images.append(image)
        captions.append(text)
    return StillsData(torch.from_numpy(np.stack(images)), tokenizer(captions), captions)


def _normalise(images: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> the model's normalised float input [B, 3, S, S]."""
    cfg = model.visual.preprocess_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (images.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def scene_pair_order(count: int, generator: torch.Generator) -> torch.Tensor:
    """A random order of the stills that keeps the two stills of each scene (rows 2i, 2i+1,
    as generate_stills yields them) next to each other, so they share a batch.

    The two differ only in where the mover is or in which phase of the events is shown:
    with both in one batch the contrastive loss must read positions and the state of each
    object, not only which colours and shapes are present (colours alone separate most
    random pairs, and an encoder trained on those stays blind to position).
    """
    pairs = torch.randperm(count // 2, generator=generator)
    order = torch.stack([2 * pairs, 2 * pairs + 1], dim=1).reshape(-1)
    if count % 2:
        order = torch.cat([order, torch.tensor([count - 1])])
    return order


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor,
                        normalize: bool = False) -> torch.Tensor:
    """open_clip's `CLIP.encode_text`, run only up to the batch's longest caption.

    The generated captions fill a third of the context (21 of 64 tokens on average) and the
    text tower is two thirds of a pretraining step. Under the causal mask no position attends
    to the padding after it and the pooled end-of-text row lies before the padding, so
    dropping the all-padding columns changes the work, not the features or their gradients.
    A tower without a causal mask, or pooled at the last position, gets the full forward.
    """
    trimmable = (getattr(model, "attn_mask", None) is not None and hasattr(model, "token_embedding")
                 and getattr(model, "text_pool_type", None) in ("argmax", "eos", "first"))
    used = (tokens != 0).any(dim=0).nonzero()  # open_clip's tokenizers pad with 0
    if not trimmable or not len(used):
        return model.encode_text(tokens, normalize=normalize)
    length = int(used.max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = text_global_pool(x, tokens, model.text_pool_type,
                         eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) \
            else x @ model.text_projection
    return torch.nn.functional.normalize(x, dim=-1) if normalize else x


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip_train's grouping: no decay on gains, biases, embeddings and logit_scale."""
    def plain(name: str, p: torch.Tensor) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name \
            or "logit_scale" in name or "embedding" in name
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if plain(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not plain(n, p)], "weight_decay": weight_decay}]


def swapped_caption(caption: str, factor: str, rng: np.random.Generator) -> str | None:
    """`caption` with one object's region (factor "region") or colour ("colour") replaced by
    another the caption does not name; None when it names none."""
    names = list(REGIONS) if factor == "region" else list(COLOURS)
    said = [m for m in (re.search(rf"\bin the {n}\b" if factor == "region" else rf"\b{n}\b",
                                  caption) for n in names) if m]
    if not said:
        return None
    match = min(said, key=lambda m: m.start())  # the first one named
    others = [n for n in names if not re.search(rf"\b{n}\b", caption)]
    new = others[int(rng.integers(len(others)))]
    text = f"in the {new}" if factor == "region" else new
    return caption[:match.start()] + text + caption[match.end():]


def swapped_caption_accuracy(model: torch.nn.Module, data: StillsData, tokenizer,
                             factor: str, seed: int = 0) -> float | None:
    """% of stills whose own caption scores above the same caption with one region (or
    colour) swapped: a frame embedding that ignores where things are sits at 50."""
    rng = np.random.default_rng(seed)
    pairs = [(i, swapped_caption(c, factor, rng)) for i, c in enumerate(data.captions)]
    pairs = [(i, text) for i, text in pairs if text]
    if not pairs:
        return None
    rows = torch.tensor([i for i, _ in pairs])
    model.eval()
    wins = 0
    with torch.no_grad():
        for start in range(0, len(rows), 256):
            chunk = rows[start:start + 256]
            image = model.encode_image(_normalise(data.images[chunk], model), normalize=True)
            own = encode_text_trimmed(model, data.tokens[chunk], normalize=True)
            swapped = encode_text_trimmed(
                model, tokenizer([text for _, text in pairs[start:start + 256]]), normalize=True)
            wins += int(((image * own).sum(-1) > (image * swapped).sum(-1)).sum())
    return 100.0 * wins / len(pairs)


def still_accuracies(model: torch.nn.Module, data: StillsData, tokenizer) -> dict:
    """Held-out retrieval top-1 (`retrieval_accuracy`) and, per factor, own caption above
    a swapped one (`swapped_caption_accuracy`): region_swap, colour_swap."""
    out = retrieval_accuracy(model, data)
    for factor in ("region", "colour"):
        value = swapped_caption_accuracy(model, data, tokenizer, factor)
        if value is not None:
            out[f"{factor}_swap"] = value
    return out


@torch.no_grad()
def retrieval_accuracy(model: torch.nn.Module, data: StillsData, batch: int = 256) -> dict:
    """Held-out image->text and text->image top-1 accuracy within batches of `batch` stills
    (a caption shared by two stills counts as right for either); fewer stills than `batch`
    are one batch. Empty (no accuracy) for fewer than 2 stills."""
    batch = min(batch, len(data.captions))
    if batch < 2:
        return {}
    model.eval()
    hits_i2t = hits_t2i = total = 0
    for start in range(0, len(data.captions) - batch + 1, batch):
        rows = slice(start, start + batch)
        image = torch.nn.functional.normalize(model.encode_image(_normalise(data.images[rows],
                                                                            model)), dim=-1)
        text = encode_text_trimmed(model, data.tokens[rows], normalize=True)
        sim = image @ text.T
        same = np.array(data.captions[rows])
        equal = torch.from_numpy(same[:, None] == same[None, :])
        hits_i2t += int(equal[torch.arange(batch), sim.argmax(1)].sum())
        hits_t2i += int(equal[sim.argmax(0), torch.arange(batch)].sum())
        total += batch
    return {"i2t_top1": 100.0 * hits_i2t / max(1, total), "t2i_top1": 100.0 * hits_t2i / max(1, total)}


def pretrain_encoder(model_name: str, cfg: PretrainConfig, out_path: str | Path, *,
                     weights_dir: str | Path, init_seed: int = 0, excluded: frozenset = frozenset(),
                     on_log: StepCallback | None = None, progress: bool = True) -> dict:
    """Train `model_name` (from its seeded random init) on `cfg.num_stills` generated stills
    with open_clip's ClipLoss; save the state dict atomically to `out_path`.

    Returns a summary: steps, seconds, final loss, held-out retrieval accuracy before and
    after. `on_log(step, record)` is called every `cfg.log_every` steps.
    """
    torch.set_num_threads(cfg.torch_threads)
    register_bundled_model_configs()
    start_path = random_init_checkpoint(model_name, init_seed, weights_dir)
    model = open_clip.create_model(model_name, pretrained=str(start_path))
    tokenizer = open_clip.get_tokenizer(model_name)
    frame_size = image_size(model)

    started = time.perf_counter()
    train = build_stills(cfg.num_stills, frame_size, tokenizer, cfg.seed, excluded,
                         cfg.moved_pairs)
    held_out = build_stills(cfg.num_eval_stills, frame_size, tokenizer, cfg.seed + 10_000,
                            excluded, cfg.moved_pairs) if cfg.num_eval_stills else None
    data_seconds = time.perf_counter() - started
    before = still_accuracies(model, held_out, tokenizer) if held_out else {}

    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    loss_fn = ClipLoss()
    # fused: one kernel over all parameters; the step is mostly the 49,408-row token
    # embedding, which the plain (foreach) AdamW walks in several passes
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  betas=(0.9, 0.98), eps=1e-6, fused=True)
    adjust_lr = cosine_lr(optimizer, cfg.lr, cfg.warmup_steps, cfg.steps)
    per_epoch = max(1, len(train.captions) // cfg.batch_size)
    order = scene_pair_order(len(train.captions), generator)
    differ = train.pairs_that_differ() if cfg.pair_loss else None
    model.train()
    running, history = [], []
    for step in tqdm(range(cfg.steps), desc="encoder pretraining", disable=not progress):
        if step and step % per_epoch == 0:
            order = scene_pair_order(len(train.captions), generator)
        rows = order[(step % per_epoch) * cfg.batch_size:][:cfg.batch_size]
        adjust_lr(step)
        image_features = model.encode_image(_normalise(train.images[rows], model), normalize=True)
        text_features = encode_text_trimmed(model, train.tokens[rows], normalize=True)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        if cfg.pair_loss and len(rows) % 2 == 0 and not int(rows[0]) % 2:
            loss = loss + cfg.pair_loss * pair_contrast_loss(
                image_features, text_features, model.logit_scale.exp(), differ[rows[0::2] // 2])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # open_clip_train clamps the temperature at 100
            model.logit_scale.clamp_(0, math.log(100))
        running.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            record = {"loss": float(np.mean(running)), "logit_scale": model.logit_scale.exp().item(),
                      "lr": optimizer.param_groups[0]["lr"]}
            running = []
            history.append({"step": step + 1, **record})
            if on_log is not None:
                on_log(step + 1, record)
    after = still_accuracies(model, held_out, tokenizer) if held_out else {}
    model.eval()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".pt.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(out_path)  # atomic: a killed run never leaves half a checkpoint
    return {"steps": cfg.steps, "seconds": time.perf_counter() - started,
            "data_seconds": data_seconds, "final_loss": history[-1]["loss"] if history else None,
            "random_init": before, "pretrained": after, "history": history,
            "checkpoint": str(out_path)}
