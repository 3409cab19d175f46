"""Stage 1, trained: CLIP4Clip's "seqTransf" temporal head over frozen frame embeddings.

meanP cannot see frame order (a door opening and closing pool to the same vector). The head
runs a small transformer over the sequence of frame CLS embeddings with learned frame
positions and adds its output to the frames as a residual before the masked mean, as in
CLIP4Clip. Unlike CLIP4Clip the residual branch is scaled by a per-channel gate that starts
at zero (LayerScale / ReZero), so an untrained head IS meanP and training starts from the
zero-shot baseline instead of from a random perturbation of it.

The text encoder stays frozen too, but CLIP4Clip fine-tunes it and a frozen EOT embedding
alone cannot be re-mapped: with `text_width` given, a small gated adapter runs over the
cached caption token features and adds to the EOT embedding (`encode_text`). Its gate also
starts at zero, so the untrained head is still exactly meanP on both sides.

With `Stage1Config.patch_branch`, each frame also reads its cached patch tokens: an MLP over
each (token + position), max over patches, gated (zero at init) onto the frame's CLS. On the
generated benchmark it took stage-1 t2v R@1 from 3.9 to 19.5 with a random-init encoder
(with time-reversed negatives). Build such a head with `TemporalHead.for_bank`.

`dual_softmax` is the inference-only DSL re-weighting (CAMoE / DSL).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from crosstvr_core.config import Stage1Config

# CLIP's temperature: init 1/0.07, the scale never exceeds 100.
LOGIT_SCALE_INIT = math.log(1.0 / 0.07)
LOGIT_SCALE_MAX = 100.0


class TemporalHead(nn.Module):
    """Frame CLS embeddings [B, F, D] + frame mask [B, F] -> unit video embeddings [B, D]."""

    # 1-D parameters AdamW must not decay (also every bias and LayerNorm weight)
    _NO_DECAY = ("frame_position", "residual_gate", "logit_scale", "text_gate", "text_position",
                 "patch_position", "patch_gate")

    def __init__(
        self,
        embed_dim: int,
        num_frames: int,
        num_layers: int,
        num_heads: int,
        dropout: float = 0.0,
        text_width: int = 0,
        context_length: int = 0,
        vision_width: int = 0,
        num_patches: int = 0,
        frame_positions: bool = True,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"TemporalHead: embed_dim {embed_dim} not divisible by {num_heads}")
        self.embed_dim, self.num_frames = embed_dim, num_frames
        self.num_layers, self.num_heads = num_layers, num_heads
        # None: no frame positions, so the head is a set function of its frames and a clip
        # scores exactly as any reordering of it (up to float rounding)
        self.frame_position = (nn.Parameter(torch.randn(num_frames, embed_dim) * 0.02)
                               if frame_positions else None)
        layer = nn.TransformerEncoderLayer(
            embed_dim,
            num_heads,
            dim_feedforward=4 * embed_dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # nested tensors are unsupported with pre-LN; the final norm closes the pre-LN stack
        self.transformer = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(embed_dim), enable_nested_tensor=False
        )
        # zero gate: output = frames exactly, so the untrained head equals meanP
        self.residual_gate = nn.Parameter(torch.zeros(embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.text_width, self.context_length = text_width, context_length
        if text_width:
            # text adapter: cached token features [L, Wt] -> a residual on the EOT embedding
            self.text_in = nn.Sequential(nn.LayerNorm(text_width), nn.Linear(text_width, embed_dim))
            self.text_position = nn.Parameter(torch.randn(context_length, embed_dim) * 0.02)
            self.text_transformer = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(
                    embed_dim, num_heads, dim_feedforward=4 * embed_dim, dropout=dropout,
                    activation="gelu", batch_first=True, norm_first=True,
                ),
                num_layers, norm=nn.LayerNorm(embed_dim), enable_nested_tensor=False,
            )
            self.text_gate = nn.Parameter(torch.zeros(embed_dim))
        self.vision_width, self.num_patches = vision_width, num_patches
        if vision_width:
            # patch branch: cached patch tokens [P, Wv] per frame -> a per-patch MLP over
            # (token, its position) -> max over patches, added to the frame's CLS embedding
            self.patch_in = nn.Sequential(nn.LayerNorm(vision_width),
                                          nn.Linear(vision_width, embed_dim))
            self.patch_position = nn.Parameter(torch.randn(num_patches, embed_dim) * 0.02)
            self.patch_mlp = nn.Sequential(
                nn.LayerNorm(embed_dim), nn.Linear(embed_dim, 2 * embed_dim), nn.GELU(),
                nn.Linear(2 * embed_dim, embed_dim),
            )
            self.patch_gate = nn.Parameter(torch.zeros(embed_dim))

    @classmethod
    def from_config(
        cls, cfg: Stage1Config, embed_dim: int, num_frames: int, text_width: int = 0,
        context_length: int = 0, vision_width: int = 0, num_patches: int = 0,
    ) -> TemporalHead:
        """A head initialised from cfg.seed, without touching the global RNG. The patch
        branch is built when cfg.patch_branch is on and the patch shapes are given."""
        patches = cfg.patch_branch and vision_width > 0 and num_patches > 0
        if cfg.patch_branch and not patches:
            warnings.warn("stage1.patch_branch is on but no patch shapes were given: the head "
                          "reads frame CLS only (build it with TemporalHead.for_bank)",
                          stacklevel=2)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return cls(embed_dim, num_frames, cfg.num_layers, cfg.num_heads,
                       text_width=text_width if cfg.text_adapter else 0,
                       context_length=context_length if cfg.text_adapter else 0,
                       vision_width=vision_width if patches else 0,
                       num_patches=num_patches if patches else 0,
                       frame_positions=cfg.frame_positions)

    @classmethod
    def for_bank(cls, cfg: Stage1Config, bank) -> TemporalHead:
        """A head sized for a TokenBank's shapes (text adapter and patch branch as cfg says)."""
        _, frames, patches, width = bank.video_patches.shape
        return cls.from_config(cfg, bank.video_cls.shape[-1], frames,
                               bank.text_tokens.shape[-1], bank.text_tokens.shape[1],
                               width, patches)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at 100 (CLIP)."""
        return self.logit_scale.exp().clamp(max=LOGIT_SCALE_MAX)

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay weight matrices only."""
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            plain = param.ndim < 2 or name in self._NO_DECAY
            (no_decay if plain else decay).append(param)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def pool_patches(self, frame_patches: torch.Tensor) -> torch.Tensor:
        """Patch tokens [B, F, P, Wv] -> one vector per frame [B, F, D]: an MLP over each
        (token + its position), then the max over patches, so a small object anywhere in
        the frame can set a feature that a mean over the whole frame would wash out."""
        patches = frame_patches.shape[2]
        if patches != self.num_patches or frame_patches.shape[-1] != self.vision_width:
            raise ValueError(f"TemporalHead: patches {tuple(frame_patches.shape)}, built for "
                             f"{self.num_patches} x {self.vision_width}")
        x = self.patch_in(frame_patches.float()) + self.patch_position  # [B, F, P, D]
        x = x + self.patch_mlp(x)
        return x.amax(dim=2)  # [B, F, D]

    def encode_text(
        self, text_eot: torch.Tensor, text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cached EOT embeddings [T, D] (+ token features [T, L, Wt] and mask [T, L] when the
        head has a text adapter) -> float32 unit vectors [T, D]."""
        base = F.normalize(text_eot.float(), dim=-1)  # [T, D]
        if not self.text_width:
            return base
        if text_tokens is None or text_mask is None:
            raise ValueError("TemporalHead: this head has a text adapter; pass text_tokens "
                             "and text_mask")
        mask = text_mask.bool()  # [T, L]
        # positions past every caption's end are padding for all: drop them before any work
        real = mask.any(dim=0).nonzero()
        length = int(real.max()) + 1 if len(real) else text_tokens.shape[1]
        text_tokens, mask = text_tokens[:, :length], mask[:, :length]
        x = self.text_in(text_tokens.float()) + self.text_position[:length]  # [T, L, D]
        x = self.text_transformer(x, src_key_padding_mask=~mask)  # [T, L, D]
        weights = mask.float().unsqueeze(-1)  # [T, L, 1]
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # [T, D]
        return F.normalize(base + self.text_gate * pooled, dim=-1)

    def forward(self, frame_cls: torch.Tensor, frame_mask: torch.Tensor,
                frame_patches: torch.Tensor | None = None) -> torch.Tensor:
        """frame_cls [B, F, D], frame_mask [B, F] (True = real frame), frame_patches
        [B, F, P, Wv] (a head with a patch branch only) -> float32 [B, D]."""
        return self.pool_frames(self.frame_features(frame_cls, frame_patches), frame_mask)

    def frame_features(self, frame_cls: torch.Tensor,
                       frame_patches: torch.Tensor | None = None) -> torch.Tensor:
        """Each frame on its own, before time: [B, F, D]. Reordering frames reorders these
        rows, so a clip played backwards reuses them (pool_frames over the flipped rows)."""
        frames = frame_cls.shape[1]
        if frames > self.num_frames:
            raise ValueError(f"TemporalHead: {frames} frames, built for {self.num_frames}")
        x = F.normalize(frame_cls.float(), dim=-1)  # [B, F, D], as meanP
        if self.vision_width:
            if frame_patches is None:
                raise ValueError("TemporalHead: this head has a patch branch; pass frame_patches")
            x = x + self.patch_gate * self.pool_patches(frame_patches)
        return x

    def pool_frames(self, x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """frame_features [B, F, D] and frame_mask [B, F] -> the clip embedding, float32
        unit [B, D]: the temporal transformer (gated residual) then the mean over real
        frames."""
        frames = x.shape[1]
        mask = frame_mask.bool()
        # a clip with no real frame would make attention NaN: let it attend to its padding
        # (its pooled embedding is zero whatever the transformer says)
        padding = ~mask & mask.any(dim=1, keepdim=True)  # [B, F], True = ignore
        timed = x if self.frame_position is None else x + self.frame_position[:frames]
        hidden = self.transformer(timed, src_key_padding_mask=padding)
        x = F.normalize(x + self.residual_gate * hidden.float(), dim=-1)  # [B, F, D]
        weights = mask.float().unsqueeze(-1)  # [B, F, 1]
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # [B, D]
        return F.normalize(pooled, dim=-1)


def dual_softmax(sim: torch.Tensor, temperature: float) -> torch.Tensor:
    """DSL re-weighting of a text x video similarity [T, V] -> [T, V] (inference only).

    out[t, v] = sim[t, v] * softmax_t(sim[:, v] / temperature)[t]: each score is multiplied
    by a prior over the TEXT axis (dim 0), i.e. how much query t stands out among all
    queries for video v. A "hub" video close to every query spreads its prior thin and is
    demoted. Text->video ranking is read along rows of the result, as for `sim`.
    It needs the whole query set at once (transductive) and changes the scale of the
    scores; training never uses it.
    """
    sim = sim.float()
    return sim * torch.softmax(sim / temperature, dim=0)
