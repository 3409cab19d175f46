"""The CrossTVR re-ranker: decoupled frame-level then video-level cross attention.

Stage 2 rescores a few stage-1 candidates per query from fine-grained frozen tokens, so it
can afford attention between text and every frame's tokens. Per frame, the CLS token plus M
patch tokens picked by a TS2-Net-style selector (token_selection) are kept. N_Q learnable
queries, concatenated with the caption's projected tokens, first look at each frame on its
own (frame level: colour, position), then at the sequence of per-frame query outputs with
temporal position embeddings (video level: order, direction). The mean of the N_Q query
outputs gives one video-text-matching (VTM) logit.

`RerankerConfig.attention` is the ablation switch (decoupled, spatial_only, temporal_only,
joint); `share_parameters` makes both levels use the same blocks (the paper's best);
`cross_attention_from` says whether only the queries cross-attend to visual tokens (the
default: text reaches them through the self-attention over [queries; text]; a prototype
stalled when the text tokens also cross-attended, CALIBRATION.md) or the whole
[queries; text] sequence does, as in the paper.

Masking: padded caption tokens are never attention keys; padded frames are never keys of
the video level (joint / temporal_only: their tokens are masked), and their inputs are
zeroed after standardisation, so padding values can never reach the logit. A video with no
real frame attends to its (zeroed) frame 0 instead of an all-masked row, which would be NaN.

Shapes: B pairs, L text tokens, F frames, P patches, M kept patches, T = 1 + M tokens per
frame, Q = N_Q queries, H hidden size.
"""

from __future__ import annotations

import torch
from torch import nn

from crosstvr_core.config import RerankerConfig
from crosstvr_core.token_bank import TokenBank
from crosstvr_core.token_selection import PatchTokenSelector

# Elements (not rows) per chunk when accumulating input statistics: bounds the float64 copy.
_STATS_CHUNK_ELEMENTS = 1 << 23

class _RunningMoments:
    """Per-dimension mean and std over many [N, W] chunks, in float64."""

    def __init__(self, width: int) -> None:
        self.count = 0
        self.total = torch.zeros(width, dtype=torch.float64)
        self.total_sq = torch.zeros(width, dtype=torch.float64)

    def update(self, values: torch.Tensor) -> None:
        values = values.to(torch.float64)  # [N, W]
        self.count += values.shape[0]
        self.total += values.sum(dim=0)
        self.total_sq += values.square().sum(dim=0)

    def result(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.count == 0:
            raise ValueError(f"fit_input_stats: no valid {name} in the bank")
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean.square()).clamp(min=0.0)
        # dead dimensions (constant features) stay finite: (x - mean) / 1e-6 * 0
        return mean.float(), var.sqrt().clamp(min=1e-6).float()


def _row_chunks(num_rows: int, row_elements: int) -> list[slice]:
    """Row slices holding about _STATS_CHUNK_ELEMENTS elements each."""
    step = max(1, _STATS_CHUNK_ELEMENTS // max(1, row_elements))
    return [slice(start, start + step) for start in range(0, num_rows, step)]


def _standardize(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """(x - mean) / std with padded positions zeroed, so padding values can never leak in."""
    x = (x - mean) / std
    return x.masked_fill(~valid.unsqueeze(-1), 0.0)


class QueryBlock(nn.Module):
    """Pre-LN block: self-attention over [queries; text], cross-attention to visual memory
    (by the queries only, or by the whole sequence), FFN.

    Split in two calls so a level can run the frame-independent self-attention once per
    pair and the cross-attention once per frame.
    """

    def __init__(self, hidden: int, heads: int, dropout: float, text_cross_attends: bool) -> None:
        super().__init__()
        self.text_cross_attends = text_cross_attends
        self.self_norm = nn.LayerNorm(hidden)
        self.self_attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.cross_norm = nn.LayerNorm(hidden)
        self.cross_attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, 4 * hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(4 * hidden, hidden),
        )
        self.dropout = nn.Dropout(dropout)

    def self_attend(
        self, x: torch.Tensor, padding: torch.Tensor, num_queries: int, queries_only: bool
    ) -> torch.Tensor:
        """x [N, Q+L, H], padding [N, Q+L] (True = ignore) -> [N, Q+L, H].

        With queries_only (last block of a level, whose text rows nobody reads) only the
        query rows are computed and returned: [N, Q, H].
        """
        h = self.self_norm(x)
        rows = h[:, :num_queries] if queries_only else h
        out, _ = self.self_attn(rows, h, h, key_padding_mask=padding, need_weights=False)
        base = x[:, :num_queries] if queries_only else x
        return base + self.dropout(out)

    def attend_memory(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_padding: torch.Tensor | None,
        num_queries: int,
    ) -> torch.Tensor:
        """Rows of x [N, Q(+L), H] attend to memory [N, K, H] (padding [N, K]), then FFN.

        Only the first Q rows attend unless text_cross_attends; rows are independent here,
        so padded text rows (never keys of the self-attention) cannot leak into the queries.
        """
        rows = x.shape[1] if self.text_cross_attends else num_queries
        attending = x[:, :rows]  # [N, Q or Q+L, H]
        attended, _ = self.cross_attn(
            self.cross_norm(attending),
            memory,
            memory,
            key_padding_mask=memory_padding,
            need_weights=False,
        )
        x = torch.cat([attending + self.dropout(attended), x[:, rows:]], dim=1)
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class CrossTVRReranker(nn.Module):
    """Video-text matching logit from frozen tokens: hierarchical decoupled cross attention."""

    _NO_DECAY_SUFFIXES = ("queries", "type_embed", "patch_pos", "temporal_pos")

    def __init__(
        self,
        cfg: RerankerConfig,
        embed_dim: int,
        vision_width: int,
        text_width: int,
        num_frames: int,
        num_patches: int,
    ) -> None:
        super().__init__()
        hidden = cfg.hidden_size
        if hidden % cfg.num_heads:
            raise ValueError(
                f"reranker: hidden_size {hidden} is not divisible by num_heads {cfg.num_heads}"
            )
        self.cfg = cfg
        self.embed_dim = embed_dim
        self.vision_width = vision_width
        self.text_width = text_width
        self.num_frames = num_frames
        self.num_patches = num_patches
        self.num_queries = cfg.num_queries
        self.attention = cfg.attention

        # Standardisation of frozen tokens with training-set statistics (fit_input_stats):
        # raw CLIP tokens have a few huge dimensions, and training stayed at chance on them.
        for kind, width in (("text", text_width), ("cls", embed_dim), ("patch", vision_width)):
            self.register_buffer(f"{kind}_mean", torch.zeros(width))
            self.register_buffer(f"{kind}_std", torch.ones(width))
        self.register_buffer("input_stats_fitted", torch.tensor(False))

        self.text_proj = nn.Sequential(nn.Linear(text_width, hidden), nn.LayerNorm(hidden))
        self.cls_proj = nn.Sequential(nn.Linear(embed_dim, hidden), nn.LayerNorm(hidden))
        self.type_embed = nn.Parameter(torch.zeros(2, hidden))  # 0: CLS, 1: patch
        self.temporal_pos = nn.Parameter(torch.zeros(num_frames, hidden))
        # temporal_only reads one CLS token per frame: no patch path at all
        self.uses_patches = cfg.attention != "temporal_only"
        self.patch_proj = self.patch_pos = self.selector = None
        self.tokens_per_frame = 1  # T = 1 + M
        if self.uses_patches:
            self.patch_proj = nn.Sequential(
                nn.Linear(vision_width, hidden), nn.LayerNorm(hidden)
            )
            self.patch_pos = nn.Parameter(torch.zeros(num_patches, hidden))
            kept = None if cfg.num_selected_patches == "all" else cfg.num_selected_patches
            self.selector = PatchTokenSelector(
                hidden, kept, cfg.selection_samples, cfg.selection_sigma
            )
            self.tokens_per_frame += self.selector.output_count(num_patches)

        def blocks() -> nn.ModuleList:
            text_cross_attends = cfg.cross_attention_from == "queries_and_text"
            return nn.ModuleList(
                QueryBlock(hidden, cfg.num_heads, cfg.dropout, text_cross_attends)
                for _ in range(cfg.num_layers)
            )

        # frame level (spatial): decoupled and spatial_only; video level (temporal):
        # decoupled, temporal_only, and joint (one level over every frame's tokens)
        self.frame_blocks = self.frame_queries = self.frame_norm = None
        self.video_blocks = self.video_queries = None
        if cfg.attention in ("decoupled", "spatial_only"):
            self.frame_blocks = blocks()
            self.frame_queries = nn.Parameter(torch.zeros(cfg.num_queries, hidden))
            self.frame_norm = nn.LayerNorm(hidden)
        if cfg.attention != "spatial_only":
            shared = cfg.share_parameters and self.frame_blocks is not None
            self.video_blocks = self.frame_blocks if shared else blocks()
            self.video_queries = nn.Parameter(torch.zeros(cfg.num_queries, hidden))
        self.head_norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, 1)

        for param in (self.type_embed, self.patch_pos, self.temporal_pos, self.frame_queries,
                      self.video_queries):
            if param is not None:
                nn.init.trunc_normal_(param, std=0.02)

    @property
    def has_input_stats(self) -> bool:
        return bool(self.input_stats_fitted)

    @torch.no_grad()
    def fit_input_stats(self, bank: TokenBank) -> None:
        """Set the standardisation buffers from a (training) bank, valid positions only."""
        self._check_widths(
            bank.text_tokens.shape[-1], bank.video_cls.shape[-1], bank.video_patches.shape[-1]
        )
        text = _RunningMoments(self.text_width)
        cls = _RunningMoments(self.embed_dim)
        patches = _RunningMoments(self.vision_width)

        num_captions, length, text_width = bank.text_tokens.shape
        for rows in _row_chunks(num_captions, length * text_width):
            text.update(bank.text_tokens[rows][bank.text_mask[rows]])  # [n, Wt]

        num_videos, frames, num_patches, width = bank.video_patches.shape
        for rows in _row_chunks(num_videos, frames * num_patches * width):
            valid = bank.frame_mask[rows]  # [c, F]
            cls.update(bank.video_cls[rows][valid])  # [n, D]
            patches.update(bank.video_patches[rows][valid].flatten(0, 1))  # [n*P, Wv]

        for kind, moments in (("text", text), ("cls", cls), ("patch", patches)):
            mean, std = moments.result(f"{kind} tokens")
            getattr(self, f"{kind}_mean").copy_(mean)
            getattr(self, f"{kind}_std").copy_(std)
        self.input_stats_fitted.fill_(True)

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay matrices only, never norms, biases, queries or embeddings."""
        decay, no_decay = [], []
        for name, param in self.named_parameters():  # shared blocks are listed once
            if not param.requires_grad:
                continue
            plain = param.ndim < 2 or name.endswith(self._NO_DECAY_SUFFIXES)
            (no_decay if plain else decay).append(param)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def forward(
        self,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        video_cls: torch.Tensor,
        video_patches: torch.Tensor,
        frame_mask: torch.Tensor,
    ) -> torch.Tensor:
        """VTM logits [B] of pairs (text_tokens [B, L, Wt], text_mask [B, L], video_cls
        [B, F, D], video_patches [B, F, P, Wv], frame_mask [B, F]; masks True = real)."""
        visual = self.encode_video(video_cls, video_patches, frame_mask)
        return self.match(text_tokens, text_mask, visual, frame_mask)

    def encode_video(
        self, video_cls: torch.Tensor, video_patches: torch.Tensor, frame_mask: torch.Tensor
    ) -> torch.Tensor:
        """Per-frame visual tokens [B, F, T, H]: projected CLS then the M selected patches.

        Depends on the video only, so a scorer can compute it once per distinct video.
        """
        batch, frames, num_patches, _ = video_patches.shape
        self._check_widths(self.text_width, video_cls.shape[-1], video_patches.shape[-1])
        if frames > self.num_frames or num_patches != self.num_patches:
            raise ValueError(
                f"reranker: got {frames} frames x {num_patches} patches, built for at most "
                f"{self.num_frames} frames x {self.num_patches} patches"
            )
        if video_cls.shape[:2] != (batch, frames) or frame_mask.shape != (batch, frames):
            raise ValueError(
                f"reranker: video_cls {tuple(video_cls.shape)} and frame_mask "
                f"{tuple(frame_mask.shape)} do not match patches {tuple(video_patches.shape)}"
            )
        frame_mask = frame_mask.bool()
        cls = _standardize(video_cls, self.cls_mean, self.cls_std, frame_mask)
        cls = self.cls_proj(cls) + self.type_embed[0]  # [B, F, H]
        if not self.uses_patches:
            return cls.unsqueeze(2)  # [B, F, 1, H]
        patches = _standardize(
            video_patches, self.patch_mean, self.patch_std, frame_mask.unsqueeze(-1)
        )
        patches = self.patch_proj(patches) + self.type_embed[1] + self.patch_pos  # [B, F, P, H]
        hidden = patches.shape[-1]
        patches = patches.reshape(batch * frames, num_patches, hidden)  # [B*F, P, H]
        kept = self.selector(patches)  # [B*F, M, H]
        kept = kept.reshape(batch, frames, -1, hidden)  # [B, F, M, H]
        return torch.cat([cls.unsqueeze(2), kept], dim=2)  # [B, F, T, H]

    def match(
        self,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        visual: torch.Tensor,
        frame_mask: torch.Tensor,
    ) -> torch.Tensor:
        """VTM logits [B] from text tokens [B, L, Wt] and encode_video's tokens [B, F, T, H]."""
        batch, frames, per_frame, hidden = visual.shape
        self._check_widths(text_tokens.shape[-1], self.embed_dim, self.vision_width)
        if text_tokens.shape[0] != batch or text_mask.shape != text_tokens.shape[:2]:
            raise ValueError(
                f"reranker: text_tokens {tuple(text_tokens.shape)}, text_mask "
                f"{tuple(text_mask.shape)} and {batch} videos do not pair up"
            )
        text_mask = text_mask.bool()
        text = _standardize(text_tokens, self.text_mean, self.text_std, text_mask)
        text = self.text_proj(text)  # [B, L, H]
        text_padding = ~text_mask  # [B, L]
        attendable = self._attendable_frames(frame_mask.bool())  # [B, F]
        temporal_pos = self.temporal_pos[:frames]  # [F, H]
        nq = self.num_queries

        if self.attention in ("decoupled", "spatial_only"):
            # Frame level: per frame, queries attend to that frame's T tokens.
            per_frame_memory = visual.reshape(batch * frames, per_frame, hidden)  # [B*F, T, H]
            frame_out = self._run_level(self.frame_blocks, self.frame_queries, text,
                                        text_padding, per_frame_memory, None, frames)
            frame_out = self.frame_norm(frame_out).reshape(batch, frames, nq, hidden)
            # frame_out: [B, F, Q, H]
            if self.attention == "spatial_only":
                weights = attendable.to(frame_out.dtype)  # [B, F]
                weights = weights / weights.sum(dim=1, keepdim=True)
                pooled = torch.einsum("bf,bfqh->bqh", weights, frame_out)  # [B, Q, H]
                return self._vtm_head(pooled)
            # Video level: fresh queries attend to every real frame's query outputs.
            memory = (frame_out + temporal_pos[:, None]).reshape(batch, frames * nq, hidden)
            padding = (~attendable).repeat_interleave(nq, dim=1)  # [B, F*Q]
        elif self.attention == "temporal_only":
            memory = visual[:, :, 0] + temporal_pos  # frame CLS tokens [B, F, H]
            padding = ~attendable  # [B, F]
        else:  # joint: every frame's tokens at once
            memory = (visual + temporal_pos[:, None]).reshape(batch, frames * per_frame, hidden)
            padding = (~attendable).repeat_interleave(per_frame, dim=1)  # [B, F*T]
        video_out = self._run_level(self.video_blocks, self.video_queries, text, text_padding,
                                    memory, padding, 1)  # [B, Q, H]
        return self._vtm_head(video_out)

    def _vtm_head(self, query_out: torch.Tensor) -> torch.Tensor:
        """Query outputs [B, Q, H] -> logits [B] from their mean."""
        return self.head(self.head_norm(query_out.mean(dim=1))).squeeze(-1)

    def _run_level(
        self,
        blocks: nn.ModuleList,
        queries: torch.Tensor,
        text: torch.Tensor,
        text_padding: torch.Tensor,
        memory: torch.Tensor,
        memory_padding: torch.Tensor | None,
        repeats: int,
    ) -> torch.Tensor:
        """[queries; text] through one level -> query outputs [B*repeats, Q, H].

        queries [Q, H], text [B, L, H], memory [B*repeats, K, H] (repeats = frames at the
        frame level, each pair's row repeated per frame, frame-major within a pair).
        """
        batch, nq = text.shape[0], queries.shape[0]
        x = torch.cat([queries.expand(batch, -1, -1), text], dim=1)  # [B, Q+L, H]
        padding = torch.cat([text_padding.new_zeros(batch, nq), text_padding], dim=1)
        for index, block in enumerate(blocks):
            last = index == len(blocks) - 1
            x = block.self_attend(x, padding, nq, queries_only=last)  # [B(*R), Q(+L), H]
            if index == 0 and repeats > 1:
                # Nothing before the first cross-attention depends on the frame: that
                # self-attention ran once per pair and is copied to every frame here.
                x = x.repeat_interleave(repeats, dim=0)  # [B*R, Q(+L), H]
                padding = padding.repeat_interleave(repeats, dim=0)  # [B*R, Q+L]
            x = block.attend_memory(x, memory, memory_padding, nq)
        return x[:, :nq]  # [B*R, Q, H]

    @staticmethod
    def _attendable_frames(frame_mask: torch.Tensor) -> torch.Tensor:
        """frame_mask [B, F], with frame 0 switched on for videos without any real frame.

        A video-level attention row whose keys are all masked would give NaN; frame 0 of
        such a video holds zeroed (standardised padding) tokens, so its logit stays finite.
        """
        attendable = frame_mask.clone()
        attendable[:, 0] |= ~frame_mask.any(dim=1)
        return attendable

    def _check_widths(self, text_width: int, embed_dim: int, vision_width: int) -> None:
        got = (text_width, embed_dim, vision_width)
        want = (self.text_width, self.embed_dim, self.vision_width)
        if got != want:
            raise ValueError(
                f"reranker: token widths (text, cls, patch) {got} do not match the model's {want}"
            )
