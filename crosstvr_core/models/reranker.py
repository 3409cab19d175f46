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
stalled when the text tokens also cross-attended) or the whole
[queries; text] sequence does, as in the paper. In the default form the text rows
self-attend over the text only: they then depend on the caption alone, run once per caption
instead of once per (pair, frame). With that and projecting only the kept patches, a
ViT-B/32-sized training step of 24 pairs went from 8.5 s to 3.3 s on one CPU thread
(benchmarks/bench_reranker.py). The queries still read the text at every block.

Masking: padded caption tokens are never attention keys; padded frames are never keys of
the video level (joint / temporal_only: their tokens are masked), and their inputs are
zeroed after standardisation, so padding values can never reach the logit. A video with no
real frame attends to its (zeroed) frame 0 instead of an all-masked row, which would be NaN.

Looking inside: `attention_maps` reruns `forward` with the cross-attention weights recorded
and reduces them to one weight per frame and one heat map per frame's patch grid, for the
retrieval gallery (gallery_data); recording leaves every output unchanged.

Shapes: B pairs, L text tokens, F frames, P patches, M kept patches, T = 1 + M tokens per
frame, Q = N_Q queries, H hidden size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from crosstvr_core.config import RerankerConfig
from crosstvr_core.models.token_selection import PatchTokenSelector
from crosstvr_core.token_bank import TokenBank

# Elements (not rows) per chunk when accumulating input statistics: bounds the float64 copy.
_STATS_CHUNK_ELEMENTS = 1 << 23
# standardisation statistics read at most this many videos, spread evenly over the bank: the
# moments are settled long before that, and a bank whose patches stay on disk is not scanned
_STATS_MAX_VIDEOS = 4096

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


def _block_diagonal(rows: int, keys: int, blocks: int, device: torch.device) -> torch.Tensor:
    """[blocks * rows, blocks * keys] boolean mask: row block b may attend to key block b."""
    block = torch.arange(blocks, device=device)
    return (block.repeat_interleave(rows)[:, None] == block.repeat_interleave(keys)[None, :])


class Attention(nn.Module):
    """Multi-head attention whose keys/values can be projected once and reused: a caption's
    text keys serve every frame of its video without being projected per frame.

    Boolean padding is True where a key must be ignored; no row here ever has all its keys
    masked (the queries are always keys of the self-attention, and the video level keeps
    frame 0 of a video without real frames).

    `keep_weights`: None (the default), or a list to which every call appends its softmax
    weights [N, heads, T, S], for people to look at (CrossTVRReranker.attention_maps). The
    fused kernel never materialises them, so they are computed a second time, explicitly,
    from the same queries, keys and mask; the output still comes from the kernel, so it is
    bit-identical with recording on or off.
    """

    # a class default, so modules pickled before the attribute existed still run
    keep_weights: list[torch.Tensor] | None = None

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query = nn.Linear(hidden, hidden)
        self.key_value = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(hidden, hidden)
        # nn.MultiheadAttention's init: Xavier over the joint q/k/v projection, zero biases
        bound = (6.0 / (hidden + 3 * hidden)) ** 0.5
        for linear in (self.query, self.key_value):
            nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(linear.bias)
        nn.init.zeros_(self.out.bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        n, length, hidden = x.shape  # [N, S, H] -> [N, heads, S, H / heads]
        return x.view(n, length, self.heads, hidden // self.heads).transpose(1, 2)

    def keys_values(self, x: torch.Tensor, index: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, S, H] -> keys, values [N, heads, S, H / heads]; with index [M], rows
        index[i] of them [M, heads, S, H / heads] (each row of x projected once)."""
        projected = self.key_value(x)  # [N, S, 2H]
        if index is not None:  # gathered while contiguous: its backward is a fast index_add
            projected = projected.index_select(0, index)
        keys, values = projected.chunk(2, dim=-1)
        return self._split_heads(keys), self._split_heads(values)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                padding: torch.Tensor | None, blocks: int = 1) -> torch.Tensor:
        """Rows x [N, T, H] attend to keys/values [N, heads, S, d] (padding [N, S]).

        blocks > 1: x and the keys are `blocks` independent segments laid end to end (the
        frames of one pair): row segment b (T / blocks rows) attends only to key segment b
        (S / blocks keys). One attention over a pair's frames runs much faster on CPU than
        one tiny attention per frame, and gives the same result."""
        n, rows, hidden = x.shape
        mask = None if padding is None else ~padding[:, None, None, :]  # [N, 1, 1, S]
        if blocks > 1:
            mask = _block_diagonal(rows // blocks, keys.shape[2] // blocks, blocks, x.device)
            if padding is not None:
                mask = mask & ~padding[:, None, None, :]
        queries = self._split_heads(self.query(x))  # [N, heads, T, d]
        out = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
        )  # [N, heads, T, d]
        if self.keep_weights is not None:
            self.keep_weights.append(self.attention_weights(queries, keys, padding, blocks))
        return self.out(out.transpose(1, 2).reshape(n, rows, hidden))

    @staticmethod
    def attention_weights(queries: torch.Tensor, keys: torch.Tensor,
                          padding: torch.Tensor | None, blocks: int = 1) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) [N, heads, T, S] with padded keys excluded: what the
        kernel in `forward` applies (its default scale, no dropout), made explicit. With
        blocks > 1, each segment's own weights: [N * blocks, heads, T / blocks, S / blocks]."""
        scores = queries @ keys.transpose(-2, -1) / math.sqrt(queries.shape[-1])
        if padding is not None:
            scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
        if blocks > 1:
            n, heads, rows, length = scores.shape
            scores = scores.view(n, heads, blocks, rows // blocks, blocks, length // blocks)
            scores = scores.diagonal(dim1=2, dim2=4)  # [N, heads, T/b, S/b, b]
            scores = scores.permute(0, 4, 1, 2, 3).reshape(n * blocks, heads, rows // blocks,
                                                           length // blocks)
        return scores.softmax(dim=-1).detach()


class QueryBlock(nn.Module):
    """Pre-LN block: self-attention, cross-attention to the visual memory, FFN.

    Two forms (RerankerConfig.cross_attention_from):
      * "queries": the queries self-attend over [queries; text] and alone cross-attend;
        the text rows self-attend over the text only, so they do not depend on the frame
        and are computed once per pair, while only the Q query rows run once per frame;
      * "queries_and_text" (the paper's): [queries; text] self-attend together and all
        rows cross-attend, so every row runs once per frame.
    """

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(hidden)
        self.self_attn = Attention(hidden, heads, dropout)
        self.cross_norm = nn.LayerNorm(hidden)
        self.cross_attn = Attention(hidden, heads, dropout)
        self.ffn_norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, 4 * hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(4 * hidden, hidden),
        )
        self.dropout = nn.Dropout(dropout)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.ffn(self.ffn_norm(x)))

    def attend_memory(self, x: torch.Tensor, memory: torch.Tensor,
                      memory_padding: torch.Tensor | None,
                      memory_index: torch.Tensor | None = None,
                      frames: int = 1) -> torch.Tensor:
        """Every row of x [N, T, H] attends to memory [N, K, H] (padding [N, K]), then FFN.
        With memory_index [N], row i attends to memory[memory_index[i]] instead: a memory
        shared by many rows (one video in many pairs) is projected to keys once.

        frames > 1 (the frame level): x [B*F, T, H] holds each pair's F frames in a row and
        memory [V, F*K, H] each video's F frames of K tokens; row (pair i, frame f) attends
        to frame f of video memory_index[i] [B] only."""
        keys, values = self.cross_attn.keys_values(memory, memory_index)
        rows, length, hidden = x.shape
        h = self.cross_norm(x).reshape(rows // frames, frames * length, hidden)
        attended = self.cross_attn(h, keys, values, memory_padding, blocks=frames)
        x = x + self.dropout(attended.reshape(rows, length, hidden))
        return self.feed_forward(x)

    def queries_self_attend(self, queries: torch.Tensor, text: torch.Tensor,
                            text_padding: torch.Tensor, text_of_row: torch.Tensor,
                            update_text: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """"queries" form: query rows [N, Q, H] over [queries; their caption's text], the
        distinct captions text [U, L, H] over their own tokens only; text_of_row [N] is the
        caption of each query row. Returns both, the text FFN'd if updated."""
        h_queries, h_text = self.self_norm(queries), self.self_norm(text)
        row_keys, row_values = self.self_attn.keys_values(h_text, text_of_row)  # [N, ...]
        query_keys, query_values = self.self_attn.keys_values(h_queries)  # [N, heads, Q, d]
        keys = torch.cat([query_keys, row_keys], dim=2)  # [N, heads, Q+L, d]
        values = torch.cat([query_values, row_values], dim=2)
        padding = torch.cat([text_padding.new_zeros(queries.shape[:2]),
                             text_padding[text_of_row]], dim=1)  # [N, Q+L]
        queries = queries + self.dropout(self.self_attn(h_queries, keys, values, padding))
        if update_text:  # text rows are read by a later block
            text_keys, text_values = self.self_attn.keys_values(h_text)  # [U, heads, L, d]
            text = text + self.dropout(self.self_attn(h_text, text_keys, text_values,
                                                      text_padding))
            text = self.feed_forward(text)
        return queries, text

    def joint_self_attend(self, x: torch.Tensor, padding: torch.Tensor, num_queries: int,
                          queries_only: bool) -> torch.Tensor:
        """Paper form: x [N, Q+L, H] over itself (padding [N, Q+L]) -> [N, Q+L, H], or only
        the query rows [N, Q, H] in a level's last block (the text rows are not read)."""
        h = self.self_norm(x)
        keys, values = self.self_attn.keys_values(h)
        rows = h[:, :num_queries] if queries_only else h
        base = x[:, :num_queries] if queries_only else x
        return base + self.dropout(self.self_attn(rows, keys, values, padding))


def _relative_places(real: torch.Tensor) -> torch.Tensor:
    """Each real position's place among its row's real positions [N, L]: -1 first, +1 last,
    0 for a row with one real position and at every padded one (real: 1.0 = real, [N, L])."""
    count = real.sum(dim=1, keepdim=True)  # [N, 1]
    place = ((real.cumsum(dim=1) - 1) / (count - 1).clamp(min=1.0) * 2 - 1) * real
    return place.masked_fill(count == 1, 0.0)


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    """[length, width] fixed sine/cosine positions (Vaswani et al.), per-dimension std ~0.7:
    any caption length works, and order is visible from the first step."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    rate = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(1e4) / width))
    out = torch.zeros(length, width)
    out[:, 0::2] = torch.sin(position * rate)
    out[:, 1::2] = torch.cos(position * rate)[:, : width // 2]
    return out


def patch_grid_coordinates(num_patches: int) -> torch.Tensor:
    """[P, 2] (x, y) of each patch in [-1, 1], row-major over a square grid (a grid that is
    not square is laid out as one row)."""
    side = math.isqrt(num_patches)
    rows, cols = (side, side) if side * side == num_patches else (1, num_patches)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, rows) if rows > 1 else torch.zeros(1),
                            torch.linspace(-1, 1, cols) if cols > 1 else torch.zeros(1),
                            indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def temporal_slope(series: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Least-squares slope over the real frames of each channel of series [B, F, C] against
    time in [-1, 1] (0 for a clip with fewer than 2 real frames): [B, C]."""
    mask = frame_mask.to(series.dtype).unsqueeze(-1)  # [B, F, 1]
    count = mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    time = torch.linspace(-1.0, 1.0, series.shape[1], device=series.device, dtype=series.dtype)
    time = time.view(1, -1, 1)
    centred_time = (time - (time * mask).sum(1, keepdim=True) / count) * mask
    centred = (series - (series * mask).sum(1, keepdim=True) / count) * mask
    spread = centred_time.square().sum(dim=1).clamp(min=1e-6)  # [B, 1]
    return (centred_time * centred).sum(dim=1) / spread


def _zero_linear(width_in: int, width_out: int) -> nn.Linear:
    """A linear map that starts as zero: an optional input added through it leaves a
    model's outputs as they were until training finds a use for it."""
    linear = nn.Linear(width_in, width_out)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


def _encoder_stack(hidden: int, heads: int, dropout: float, layers: int) -> nn.ModuleList:
    """Pre-LN self-attention blocks (batch first) for the text and temporal contexts."""
    return nn.ModuleList(
        nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout, batch_first=True,
                                   norm_first=True, activation="gelu")
        for _ in range(layers)
    )


def _run_stack(stack: nn.ModuleList, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """x [N, S, H] through `stack`, keys masked where padding [N, S] is True."""
    for layer in stack:
        x = layer(x, src_key_padding_mask=padding)
    return x


def reranker_shape_kwargs(shapes: dict) -> dict[str, int]:
    """The constructor's size arguments, picked from an index's token shapes (TokenShapes
    as a dict, which also holds sizes the re-ranker does not take)."""
    return {name: shapes[name]
            for name in ("embed_dim", "vision_width", "text_width", "num_frames", "num_patches")}


class FusionWeights:
    """The w of `stage1 + w * stage2` per direction (text->video, video->text) of an
    nn.Module re-ranker, as chosen on the validation split while training: a buffer, so it is
    saved with the weights."""

    def _register_fusion_weights(self) -> None:
        self.register_buffer("fusion_weights", torch.ones(2))

    def set_fusion_weights(self, text_to_video: float, video_to_text: float) -> None:
        self.fusion_weights.copy_(torch.tensor([text_to_video, video_to_text]))

    @property
    def fusion_weight_t2v(self) -> float:
        return float(self.fusion_weights[0])

    @property
    def fusion_weight_v2t(self) -> float:
        return float(self.fusion_weights[1])


class CrossTVRReranker(FusionWeights, nn.Module):
    """Video-text matching logit from frozen tokens: hierarchical decoupled cross attention."""

    _NO_DECAY_SUFFIXES = ("queries", "type_embed", "patch_pos", "temporal_pos", "match_scale",
                          "ground_sharpness", "ground_scale", "frozen_scale", "ground_mention",
                          "word_sharpness", "word_scale", "presence_sharpness",
                          "presence_scale", "word_salience")

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
        self._register_fusion_weights()

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
            # the scorer reads the standardised frozen patches (width Wv) before projection,
            # so only the M kept patches per frame are projected
            self.selector = PatchTokenSelector(
                vision_width, kept, cfg.selection_samples, cfg.selection_sigma, hidden // 2
            )
            self.tokens_per_frame += self.selector.output_count(num_patches)

        self.text_cross_attends = cfg.cross_attention_from == "queries_and_text"
        # stage 2's own text side: the caption's tokens in context, with positions
        self.text_encoder = _encoder_stack(hidden, cfg.num_heads, cfg.dropout, cfg.text_layers)
        # word order as a sequence: each token's state learns what came before and after it
        self.text_recurrent = None
        if cfg.text_recurrent:
            self.text_recurrent = nn.GRU(hidden, hidden // 2, batch_first=True,
                                         bidirectional=True)
            self.text_recurrent_norm = nn.LayerNorm(hidden)
        # time from the first step: frame summaries (+ positions, + frame differences)
        # self-attend before any cross attention reads them
        # (not for the spatial_only ablation, which by definition never reads frame order)
        temporal_layers = 0 if cfg.attention == "spatial_only" else cfg.temporal_layers
        self.temporal_encoder = _encoder_stack(hidden, cfg.num_heads, cfg.dropout,
                                               temporal_layers)
        self.frame_diff_proj = None
        self.grid_differences = bool(cfg.grid_summary and cfg.frame_differences
                                     and temporal_layers)
        if cfg.frame_differences and temporal_layers:
            # the CLS difference, and with grid_summary the patch-grid difference: summed over
            # time it is (last grid - first grid), so motion is linear in the states' mean
            width = embed_dim + (num_patches * vision_width if self.grid_differences else 0)
            self.frame_diff_proj = nn.Sequential(nn.Linear(width, hidden), nn.LayerNorm(hidden))
        self.grid_proj = None
        if cfg.grid_summary and temporal_layers:
            self.grid_proj = nn.Sequential(nn.Linear(num_patches * vision_width, hidden),
                                           nn.LayerNorm(hidden))
        self.keypoint_saliency = self.keypoint_proj = None
        if cfg.keypoints and temporal_layers:
            self.keypoint_saliency = nn.Linear(vision_width, cfg.keypoints)
            self.keypoint_proj = nn.Sequential(nn.Linear(3 * cfg.keypoints, hidden),
                                               nn.LayerNorm(hidden))
            self.register_buffer("patch_xy", patch_grid_coordinates(num_patches),
                                 persistent=False)
        # the clip's trend: least-squares slope over time of each keypoint statistic and of
        # the standardised CLS, added to every frame after the temporal blocks. Forward and
        # reversed clips have opposite slopes, so order is one linear read-out away
        self.trend_proj = None
        if temporal_layers:
            width = embed_dim + (3 * cfg.keypoints if self.keypoint_saliency is not None else 0)
            self.trend_proj = nn.Sequential(nn.Linear(width, hidden), nn.LayerNorm(hidden))
        self.match_text = self.match_video = self.match_scale = None
        if cfg.match_term:  # a direct text x video product beside the query-mean head
            self.match_text = nn.Linear(hidden, hidden)
            self.match_video = nn.Linear(hidden, hidden)
            self.match_scale = nn.Parameter(torch.tensor(math.log(5.0)))
        self.match_reads_time = cfg.match_video == "temporal"
        # the temporal terms' scale parameters hold logs (term_scale reads them)
        self.log_term_scales = cfg.log_term_scales
        self.match_motion = None
        if cfg.match_term and not self.match_reads_time and self.keypoint_saliency is not None:
            # where the salient things go over the clip: direction, not the order of events
            self.match_motion = nn.Sequential(nn.Linear(3 * cfg.keypoints, hidden),
                                              nn.LayerNorm(hidden))

        self.caption_summary = None
        if cfg.caption_summary:  # the caption's frozen embedding into every token, from zero
            self.caption_summary = _zero_linear(embed_dim, hidden)

        self.word_features = None
        if cfg.word_features:  # each token's own frozen embedding into it, from zero
            self.word_features = _zero_linear(embed_dim, hidden)

        self.frozen_scale = None
        if cfg.frozen_similarity_term:
            # meanP's cosine spans ~0.1 between a caption's best and worst candidates
            self.frozen_scale = nn.Parameter(torch.tensor(math.log(20.0)))

        self.ground_text = self.ground_video = self.ground_when = None
        if cfg.grounding_term and cfg.attention != "spatial_only":
            self.ground_text = nn.Linear(hidden, hidden)
            self.ground_video = nn.Linear(hidden, hidden)
            heads = cfg.grounding_heads
            if hidden % heads:
                raise ValueError(f"reranker: hidden_size {hidden} is not divisible by "
                                 f"grounding_heads {heads}")
            self.ground_heads = heads
            # per token and head: expected time, importance
            self.ground_when = nn.Linear(hidden, 2 * heads)
            self.ground_sharpness = nn.Parameter(torch.tensor(math.log(10.0)))
            self.ground_mention = None
            if cfg.grounding_mention_order:  # a learned weight, from no effect
                self.ground_mention = nn.Parameter(torch.zeros(heads))
            self.ground_cursor = None
            if cfg.grounding_cursor:  # each token's move of the time cursor, from no effect
                self.ground_cursor = _zero_linear(hidden, heads)
            self.ground_scale = nn.Parameter(self._scale_init(2.0))

        self.word_when = None
        if cfg.word_timing_term and cfg.attention != "spatial_only":
            # per token: expected time, importance (the observed time is frozen)
            self.word_when = nn.Linear(hidden, 2)
            self.word_centred = cfg.word_timing_centred
            self.word_salience = None
            if cfg.word_timing_salience:  # a learned weight on each token's salience
                self.word_salience = nn.Parameter(torch.tensor(1.0))
            # frozen word-frame cosines differ by a few hundredths over a clip
            self.word_sharpness = nn.Parameter(torch.tensor(math.log(50.0)))
            self.word_scale = nn.Parameter(self._scale_init(2.0))

        self.word_presence = None
        if cfg.word_presence_term:
            # per token: its importance (whether the clip shows it is read from frozen parts)
            self.word_presence = nn.Linear(hidden, 1)
            self.presence_sharpness = nn.Parameter(torch.tensor(math.log(50.0)))
            # a token's presence moves by a few hundredths of a cosine between clips
            self.presence_scale = nn.Parameter(torch.tensor(20.0))
            # mean unit frame embedding of the training bank (fit_input_stats): a token's
            # expected cosine with a frame, its presence baseline
            self.register_buffer("unit_cls_mean", torch.zeros(embed_dim))

        def blocks() -> nn.ModuleList:
            return nn.ModuleList(
                QueryBlock(hidden, cfg.num_heads, cfg.dropout) for _ in range(cfg.num_layers)
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

        for param in (self.type_embed, self.patch_pos, self.frame_queries, self.video_queries):
            if param is not None:
                nn.init.trunc_normal_(param, std=0.02)
        nn.init.trunc_normal_(self.temporal_pos, std=cfg.temporal_pos_std)

    @property
    def has_input_stats(self) -> bool:
        return bool(self.input_stats_fitted)

    @torch.no_grad()
    def fit_input_stats(self, bank: TokenBank) -> None:
        """Set the standardisation buffers from a (training) bank, valid positions only (the
        videos: at most _STATS_MAX_VIDEOS of them, evenly spaced)."""
        self._check_widths(
            bank.text_tokens.shape[-1], bank.video_cls.shape[-1], bank.video_patches.shape[-1]
        )
        text = _RunningMoments(self.text_width)
        cls = _RunningMoments(self.embed_dim)
        patches = _RunningMoments(self.vision_width)

        num_captions, length, text_width = bank.text_tokens.shape
        for rows in _row_chunks(num_captions, length * text_width):
            text.update(bank.text_tokens[rows][bank.text_mask[rows]])  # [n, Wt]

        # the word-presence baseline: the mean unit frame embedding
        unit_sum, unit_count = torch.zeros(self.embed_dim, dtype=torch.float64), 0
        num_videos, frames, num_patches, width = bank.video_patches.shape
        sample = torch.linspace(0, num_videos - 1, min(num_videos, _STATS_MAX_VIDEOS)).long()
        for chunk in _row_chunks(len(sample), frames * num_patches * width):
            rows = sample[chunk]
            valid = bank.frame_mask[rows]  # [c, F]
            frame_cls = bank.video_cls[rows][valid]  # [n, D]
            cls.update(frame_cls)
            patches.update(bank.video_patches[rows][valid].flatten(0, 1))  # [n*P, Wv]
            unit_sum += F.normalize(frame_cls.double(), dim=-1).sum(dim=0)
            unit_count += len(frame_cls)

        for kind, moments in (("text", text), ("cls", cls), ("patch", patches)):
            mean, std = moments.result(f"{kind} tokens")
            getattr(self, f"{kind}_mean").copy_(mean)
            getattr(self, f"{kind}_std").copy_(std)
        if getattr(self, "word_presence", None) is not None:
            self.unit_cls_mean.copy_((unit_sum / max(unit_count, 1)).float())
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
        text_eot: torch.Tensor | None = None,
        text_words: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """VTM logits [B] of pairs (text_tokens [B, L, Wt], text_mask [B, L], video_cls
        [B, F, D], video_patches [B, F, P, Wv], frame_mask [B, F]; masks True = real;
        text_eot [B, D], the caption embeddings, for the frozen-similarity term; text_words
        [B, L, D], each token's own frozen embedding, for the word-timing term)."""
        visual = self.encode_video(video_cls, video_patches, frame_mask)
        return self.match(text_tokens, text_mask, visual, frame_mask, text_eot=text_eot,
                          video_cls=video_cls, text_words=text_words,
                          video_patches=video_patches)

    @torch.no_grad()
    def attention_maps(
        self,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        video_cls: torch.Tensor,
        video_patches: torch.Tensor,
        frame_mask: torch.Tensor,
        text_eot: torch.Tensor | None = None,
        text_words: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the queries looked, for a person to see: (frame_weights [B, F], patch_heat
        [B, F, P]) of the same pairs `forward` takes, computed in eval mode.

        frame_weights: the video-level queries' cross-attention summed over each frame's
        memory entries (its Q frame-level query outputs; for temporal_only its CLS token; for
        joint its T tokens), averaged over queries, heads and that level's blocks, then
        renormalised to sum 1 over the real frames (0 on padded frames; all 0 for a video
        without real frames). spatial_only has no video level: it means frames uniformly,
        which is what these weights show.

        patch_heat: the frame-level queries' cross-attention over each frame's T = 1 + M
        tokens, averaged over queries, heads and blocks, with the CLS token dropped and each
        kept patch's weight put at its place in the P-patch grid (0 for patches the selector
        dropped and for padded frames). A frame's heat sums to 1 minus the weight on its CLS.
        joint has no frame level: its heat is the joint level's weights on each frame's
        tokens, renormalised within the frame (the share of that frame's attention, as for
        the frame level). temporal_only reads no patches: its heat is all zeros.

        Only the queries' rows are read (in the paper form the text rows cross-attend too).
        The two levels share their blocks by default, so the recorded calls are told apart by
        their order: `match` runs every frame-level block, then every video-level block; the
        shapes are checked against that.
        """
        frame_mask = frame_mask.bool()
        batch, frames = frame_mask.shape
        modules = {id(m): m for blocks in (self.frame_blocks, self.video_blocks)
                   if blocks is not None for m in (b.cross_attn for b in blocks)}
        record: list[torch.Tensor] = []
        was_training = self.training
        self.eval()  # hard top-M selection, no dropout: what evaluation scores
        try:
            for module in modules.values():
                module.keep_weights = record
            if text_eot is None and getattr(self, "caption_summary", None) is None:
                # the frozen-similarity term adds to the logit, not the maps
                text_eot = video_cls.new_zeros(batch, video_cls.shape[-1])
            self(text_tokens, text_mask, video_cls, video_patches, frame_mask, text_eot=text_eot,
                 text_words=text_words)
            kept = self._kept_patch_indices(video_patches, frame_mask)  # [B, F, M] | None
        finally:
            for module in modules.values():
                module.keep_weights = None
            self.train(was_training)

        num_frame_blocks = len(self.frame_blocks) if self.frame_blocks is not None else 0
        frame_level = self._query_attention(record[:num_frame_blocks], batch * frames)
        video_level = self._query_attention(record[num_frame_blocks:], batch)
        real = frame_mask.to(video_cls.dtype)
        tokens = None  # [B, F, T]: attention over each frame's tokens, CLS first
        if self.attention == "spatial_only":
            per_frame = real.clone()
        elif self.attention == "temporal_only":
            per_frame = video_level  # [B, F]: one CLS token per frame
        elif self.attention == "joint":
            video_level = video_level.view(batch, frames, -1)  # [B, F, T]
            per_frame = video_level.sum(dim=-1)
            tokens = video_level / per_frame.unsqueeze(-1).clamp(min=1e-12)
        else:  # decoupled: Q frame-level query outputs per frame
            per_frame = video_level.view(batch, frames, self.num_queries).sum(dim=-1)
        if frame_level is not None:
            tokens = frame_level.view(batch, frames, -1)
        per_frame = per_frame * real
        frame_weights = per_frame / per_frame.sum(dim=1, keepdim=True).clamp(min=1e-12)

        patch_heat = video_cls.new_zeros(batch, frames, self.num_patches)
        if tokens is not None:
            if kept is None:  # every patch kept, in grid order: token j + 1 is patch j
                patch_heat = tokens[:, :, 1:].clone()
            else:
                patch_heat.scatter_(2, kept, tokens[:, :, 1:])
            patch_heat = patch_heat * real.unsqueeze(-1)
        return frame_weights, patch_heat

    def _query_attention(self, weights: list[torch.Tensor], rows: int) -> torch.Tensor | None:
        """One level's recorded weights [rows, heads, Q(+L), S] per block -> the queries'
        mean over queries, heads and blocks [rows, S] (None for a level that did not run)."""
        if not weights:
            return None
        for w in weights:
            if w.shape[0] != rows or w.shape[2] < self.num_queries:
                raise RuntimeError(
                    f"reranker.attention_maps: recorded attention {tuple(w.shape)} is not a "
                    f"level of {rows} rows; did `match` change the order of its levels?")
        if len({w.shape[-1] for w in weights}) != 1:
            raise RuntimeError("reranker.attention_maps: blocks of one level attend to "
                               f"memories of different lengths {[w.shape for w in weights]}")
        return torch.stack([w[:, :, : self.num_queries].mean(dim=(1, 2)) for w in weights]
                           ).mean(dim=0)

    def _kept_patch_indices(self, video_patches: torch.Tensor,
                            frame_mask: torch.Tensor) -> torch.Tensor | None:
        """The grid position [B, F, M] of each kept patch token, as encode_video picks them
        in eval mode (the hard top-M of the selector on the standardised patches), or None
        when every patch is kept in grid order (or none is read: temporal_only)."""
        if self.selector is None:
            return None
        batch, frames, num_patches, width = video_patches.shape
        patches = _standardize(video_patches, self.patch_mean, self.patch_std,
                               frame_mask.unsqueeze(-1))
        chosen = self.selector.indicators(patches.reshape(batch * frames, num_patches, width))
        if chosen is None:
            return None
        return chosen.argmax(dim=-1).view(batch, frames, -1)

    def encode_text(self, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                    text_eot: torch.Tensor | None = None,
                    text_words: torch.Tensor | None = None) -> torch.Tensor:
        """Standardised, projected text tokens [U, L, H] (padding zeroed). With the caption
        summary, every token also gets the caption's frozen embedding text_eot [U, D]; with
        word features, its own frozen embedding text_words [U, L, D]."""
        self._check_widths(text_tokens.shape[-1], self.embed_dim, self.vision_width)
        if text_mask.shape != text_tokens.shape[:2]:
            raise ValueError(f"reranker: text_mask {tuple(text_mask.shape)} does not match "
                             f"text_tokens {tuple(text_tokens.shape)}")
        text_mask = text_mask.bool()
        text = self.text_proj(_standardize(text_tokens, self.text_mean, self.text_std, text_mask))
        summary = getattr(self, "caption_summary", None)  # re-rankers pickled before it: none
        if summary is not None:
            if text_eot is None or text_eot.shape != (text.shape[0], self.embed_dim):
                raise ValueError("reranker: reranker.caption_summary needs text_eot [U, "
                                 f"{self.embed_dim}] (the captions' frozen embeddings), got "
                                 f"{None if text_eot is None else tuple(text_eot.shape)}")
            eot = F.normalize(text_eot.float(), dim=-1).to(text.dtype)
            text = (text + summary(eot).unsqueeze(1)).masked_fill(~text_mask.unsqueeze(-1), 0.0)
        words = getattr(self, "word_features", None)  # re-rankers pickled before it: none
        if words is not None:
            if text_words is None or text_words.shape[:2] != text.shape[:2]:
                raise ValueError("reranker: reranker.word_features needs text_words [U, L, "
                                 f"{self.embed_dim}] (each caption token's frozen embedding: "
                                 "attach_word_embeddings), got "
                                 f"{None if text_words is None else tuple(text_words.shape)}")
            unit = F.normalize(text_words.float(), dim=-1).to(text.dtype)
            text = (text + words(unit)).masked_fill(~text_mask.unsqueeze(-1), 0.0)
        if len(self.text_encoder):
            text = text + sinusoidal_positions(text.shape[1], text.shape[2]).to(text)
            text = _run_stack(self.text_encoder, text, ~self._attendable_frames(text_mask))
            text = text.masked_fill(~text_mask.unsqueeze(-1), 0.0)
        if getattr(self, "text_recurrent", None) is not None:
            text = self._recurrent_context(text, text_mask)
        return text

    def _recurrent_context(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """text [U, L, H] + a bidirectional GRU over each caption's real tokens (packed, so a
        caption's states never depend on how much padding its batch has), layer-normed."""
        lengths = text_mask.sum(dim=1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(text.float(), lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.text_recurrent(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                  total_length=text.shape[1])
        text = self.text_recurrent_norm(text + out.to(text.dtype))
        return text.masked_fill(~text_mask.unsqueeze(-1), 0.0)

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
        standard_cls, cls, patches = self._standard_frames(video_cls, video_patches, frame_mask)
        cls = self._temporal_context(cls, standard_cls, patches, frame_mask)
        if not self.uses_patches:
            return cls.unsqueeze(2)  # [B, F, 1, H]
        patches = patches.reshape(batch * frames, num_patches, -1)  # [B*F, P, Wv]
        chosen = self.selector.indicators(patches)  # [B*F, M, P], None = keep all
        if chosen is None:
            kept, positions = patches, self.patch_pos  # [B*F, P, Wv], [P, H]
        elif not self.training:  # hard one-hot rows: a gather, not a matmul
            index = chosen.argmax(dim=-1)  # [B*F, M]
            kept = patches.gather(1, index.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
            positions = self.patch_pos[index]  # [B*F, M, H]
        else:
            chosen = chosen.to(patches.dtype)
            kept = torch.einsum("nmp,npw->nmw", chosen, patches)  # [B*F, M, Wv]
            positions = torch.einsum("nmp,ph->nmh", chosen, self.patch_pos)  # [B*F, M, H]
        kept = self.patch_proj(kept) + self.type_embed[1] + positions  # [B*F, M, H]
        kept = kept.reshape(batch, frames, kept.shape[1], -1)  # [B, F, M, H]
        return torch.cat([cls.unsqueeze(2), kept], dim=2)  # [B, F, T, H]

    def _standard_frames(self, video_cls: torch.Tensor, video_patches: torch.Tensor,
                         frame_mask: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The standardised CLS [B, F, D], its projection (+ the CLS type) [B, F, H] and the
        standardised patches [B, F, P, Wv], padded frames zeroed."""
        standard_cls = _standardize(video_cls, self.cls_mean, self.cls_std, frame_mask)
        cls = self.cls_proj(standard_cls) + self.type_embed[0]  # [B, F, H]
        patches = _standardize(
            video_patches, self.patch_mean, self.patch_std, frame_mask.unsqueeze(-1)
        )  # [B, F, P, Wv]
        return standard_cls, cls, patches

    def _frame_summaries(self, x: torch.Tensor, standard_cls: torch.Tensor,
                         patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, F, H] plus what each frame shows on its own (a map of the patch grid, the
        keypoints), and the series [B, F, W] whose slope over time is the trend."""
        if self.grid_proj is not None:
            x = x + self.grid_proj(patches.flatten(2))
        series = standard_cls
        if self.keypoint_saliency is not None:
            keypoints = self._keypoints(patches)  # [B, F, 3K]
            x = x + self.keypoint_proj(keypoints)
            series = torch.cat([keypoints, standard_cls], dim=-1)
        return x, series

    def _temporal_context(self, cls: torch.Tensor, standard_cls: torch.Tensor,
                          patches: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """Frame CLS tokens [B, F, H] -> the same tokens after self-attention over time
        (temporal positions, frame differences of the standardised CLS [B, F, D], a map of
        the standardised patch grid [B, F, P, Wv])."""
        if not len(self.temporal_encoder):
            return cls
        x, series = self._frame_summaries(cls + self.temporal_pos[: cls.shape[1]],
                                          standard_cls, patches)
        if self.frame_diff_proj is not None:
            frames = standard_cls
            if self.grid_differences:
                frames = torch.cat([standard_cls, patches.flatten(2)], dim=-1)
            previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
            both = frame_mask & torch.cat([frame_mask[:, :1], frame_mask[:, :-1]], dim=1)
            diff = (frames - previous).masked_fill(~both.unsqueeze(-1), 0.0)
            x = x + self.frame_diff_proj(diff)
        x = _run_stack(self.temporal_encoder, x, ~self._attendable_frames(frame_mask))
        if self.trend_proj is not None:
            x = x + self.trend_proj(temporal_slope(series, frame_mask)).unsqueeze(1)
        return x.masked_fill(~frame_mask.unsqueeze(-1), 0.0)

    def _pooled_frames(self, video_cls: torch.Tensor, video_patches: torch.Tensor,
                       frame_mask: torch.Tensor) -> torch.Tensor:
        """[V, H]: each frame's own summary (CLS, grid map, keypoints) averaged over the real
        frames, plus the motion of the clip (the slope over time of its keypoints). No
        attention over time: the order of the frames reaches it only through where the
        salient things move, a linear read-out, not through what is seen when."""
        standard_cls, cls, patches = self._standard_frames(video_cls, video_patches, frame_mask)
        x, series = self._frame_summaries(cls, standard_cls, patches)
        frames = self._attendable_frames(frame_mask).to(x.dtype).unsqueeze(-1)
        pooled = (x * frames).sum(1) / frames.sum(1)  # [V, H]
        if self.match_motion is not None:  # the series starts with the keypoints [V, F, 3K]
            keypoints = series[..., : self.match_motion[0].in_features]
            pooled = pooled + self.match_motion(temporal_slope(keypoints, frame_mask))
        return pooled

    def _keypoints(self, patches: torch.Tensor) -> torch.Tensor:
        """Standardised patches [B, F, P, Wv] -> per frame and keypoint its expected grid
        position (x, y in [-1, 1]) under a softmax saliency over patches, and the peak
        saliency: [B, F, 3K]."""
        logits = self.keypoint_saliency(patches)  # [B, F, P, K]
        weights = logits.softmax(dim=2)
        xy = torch.einsum("bfpk,pc->bfkc", weights, self.patch_xy)  # [B, F, K, 2]
        peak = logits.amax(dim=2, keepdim=True).transpose(2, 3)  # [B, F, K, 1]
        return torch.cat([xy, torch.tanh(peak / 4)], dim=-1).flatten(2)

    def _match_logit(self, text: torch.Tensor, text_mask: torch.Tensor,
                     text_index: torch.Tensor, visual: torch.Tensor,
                     video: tuple[torch.Tensor, torch.Tensor] | None,
                     frame_mask: torch.Tensor, video_index: torch.Tensor) -> torch.Tensor:
        """Scaled cosine [B] of the pooled text states [U, L, H] (caption text_index[i])
        and the frame states of video video_index[i] pooled over its real frames: the frame
        tokens visual[:, :, 0] [V, F, H] after the temporal blocks, or with
        reranker.match_video=frames each frame's own summary before them (`_pooled_frames`
        of video = (video_cls [V, F, D], video_patches [V, F, P, Wv]))."""
        weights = text_mask.to(text.dtype).unsqueeze(-1)
        pooled_text = (text * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # [U, H]
        if getattr(self, "match_reads_time", True):  # pickled before the option: temporal
            frames = self._attendable_frames(frame_mask).to(visual.dtype).unsqueeze(-1)
            pooled_video = (visual[:, :, 0] * frames).sum(1) / frames.sum(1)  # [V, H]
        elif video is None:
            raise ValueError("reranker: reranker.match_video=frames needs video_cls and "
                             "video_patches")
        else:
            pooled_video = self._pooled_frames(*video, frame_mask).to(visual.dtype)
        t = F.normalize(self.match_text(pooled_text), dim=-1)[text_index]
        v = F.normalize(self.match_video(pooled_video), dim=-1)[video_index]
        return self.match_scale.exp() * (t * v).sum(-1)

    def _frozen_logit(self, text_eot: torch.Tensor | None, video_cls: torch.Tensor | None,
                      frame_mask: torch.Tensor, text_index: torch.Tensor,
                      video_index: torch.Tensor) -> torch.Tensor:
        """Scaled cosine [B] of caption embedding text_eot[text_index[i]] and the mean frame
        embedding of video_cls[video_index[i]] over real frames (padding never read, 0 for a
        clip without any): the frozen encoder's own score (meanP, except that the frames are
        averaged before normalising), in float32 (bf16 would blur differences of a few
        thousandths)."""
        if text_eot is None or video_cls is None:
            raise ValueError("reranker: the frozen-similarity term needs text_eot (caption "
                             "embeddings) and video_cls; pass them, or build the re-ranker "
                             "with reranker.frozen_similarity_term=false")
        if text_eot.shape[-1] != self.embed_dim or video_cls.shape[-1] != self.embed_dim:
            raise ValueError(f"reranker: text_eot {tuple(text_eot.shape)} and video_cls "
                             f"{tuple(video_cls.shape)} must have width {self.embed_dim}")
        frames = frame_mask.float().unsqueeze(-1)  # [V, F, 1]; a clip without frames: 0
        pooled = (video_cls.float() * frames).sum(1) / frames.sum(1).clamp(min=1.0)  # [V, D]
        t = F.normalize(text_eot.float(), dim=-1)[text_index]
        v = F.normalize(pooled, dim=-1)[video_index]
        return self.frozen_scale.float().exp() * (t * v).sum(-1)

    def _grounding_logit(self, expected: torch.Tensor, importance: torch.Tensor,
                         observed: torch.Tensor) -> torch.Tensor:
        """Temporal grounding [B]: sum over caption tokens (and heads) of importance x
        expected time x observed time (`grounding_times`), with a learned scale. Playing a
        clip backwards flips every observed time, so the term changes sign."""
        terms = torch.einsum("blg,bgl->b", expected * importance, observed)
        return self.term_scale(self.ground_scale) * terms / expected.shape[-1]

    def _scale_init(self, value: float) -> torch.Tensor:
        """A temporal term's scale parameter: `value`, or its log with log_term_scales."""
        return torch.tensor(math.log(value) if self.log_term_scales else value)

    def term_scale(self, parameter: torch.Tensor) -> torch.Tensor:
        """The multiplier a temporal term's scale parameter stands for."""
        # getattr: re-rankers pickled before log scales existed stored the plain value
        return parameter.exp() if getattr(self, "log_term_scales", False) else parameter

    def _word_timing_logit(self, expected: torch.Tensor, importance: torch.Tensor,
                           observed: torch.Tensor) -> torch.Tensor:
        """Word timing [B]: sum over caption tokens of importance x expected x observed time
        (`word_times`), with a learned scale; a clip played backwards changes its sign."""
        return self.term_scale(self.word_scale) * (expected * importance * observed).sum(dim=1)

    @property
    def reads_word_embeddings(self) -> bool:
        """Whether pairs need text_words (each caption token's own frozen embedding)."""
        # getattr: re-rankers pickled before these terms existed have neither attribute
        return any(getattr(self, name, None) is not None
                   for name in ("word_when", "word_presence", "word_features"))

    def _word_frame_similarity(self, text_words: torch.Tensor, video_cls: torch.Tensor,
                               frame_mask: torch.Tensor, text_index: torch.Tensor,
                               video_index: torch.Tensor
                               ) -> tuple[torch.Tensor, ...]:
        """Float32 cosine [B, L, F] of each caption token's frozen embedding (text_words
        [U, L, D], caption text_index[i]) with each frame's frozen embedding (video_cls
        [V, F, D], video video_index[i]), the unit word embeddings [B, L, D], the
        attendable frames [B, F] and the unit frame embeddings [B, F, D]. Call with
        autocast off."""
        words = F.normalize(text_words.float(), dim=-1)[text_index]  # [B, L, D]
        frames = F.normalize(video_cls.float(), dim=-1)[video_index]  # [B, F, D]
        similarity = torch.einsum("bld,bfd->blf", words, frames)
        return similarity, words, self._attendable_frames(frame_mask)[video_index], frames

    def word_presence_logit(self, text: torch.Tensor, text_mask: torch.Tensor,
                            text_index: torch.Tensor, text_words: torch.Tensor | None,
                            video_cls: torch.Tensor | None, frame_mask: torch.Tensor,
                            video_index: torch.Tensor) -> torch.Tensor:
        """Word presence [B]: sum over caption tokens of a learned importance (softmax over
        the caption's real tokens) x how strongly the clip shows the token: the soft maximum
        over real frames of its frozen embedding's cosine with the frame's frozen embedding,
        less its cosine with the mean training frame (a word that resembles every frame
        earns nothing). Only the importance, sharpness and scale are learned."""
        if text_words is None or video_cls is None:
            raise ValueError("reranker: reranker.word_presence_term needs text_words (each "
                             "caption token's frozen embedding: attach_word_embeddings) and "
                             "video_cls")
        with torch.autocast(device_type=text.device.type, enabled=False):
            similarity, words, attendable, _ = self._word_frame_similarity(
                text_words, video_cls, frame_mask, text_index, video_index)
            sharpness = self.presence_sharpness.exp()
            soft_max = (similarity * sharpness).masked_fill(
                ~attendable[:, None, :], float("-inf")).logsumexp(dim=-1)  # [B, L]
            # minus log(frames): a clip showing a word in every frame scores its cosine
            soft_max = (soft_max - attendable.sum(dim=1, keepdim=True).clamp(min=1).log()
                        ) / sharpness
            baseline = words @ self.unit_cls_mean.float()  # [B, L]
            presence = (soft_max - baseline).masked_fill(~text_mask[text_index], 0.0)
        importance = self.word_presence(text).float().squeeze(-1)  # [U, L]
        importance = importance.masked_fill(~text_mask, float("-inf")).softmax(dim=1)
        return self.presence_scale * (importance[text_index] * presence).sum(dim=1)

    def word_times(self, text: torch.Tensor, text_mask: torch.Tensor, text_index: torch.Tensor,
                   text_words: torch.Tensor | None, video_cls: torch.Tensor | None,
                   frame_mask: torch.Tensor, video_index: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the word-timing term compares, per pair (caption text_index[i], video
        video_index[i]): the expected time [B, L] read from the caption's states text
        [U, L, H] (tanh, in [-1, 1]), the importance [B, L] (softmax over its real tokens),
        and the observed time [B, L]: where over the clip's real frames (-1 first, +1 last)
        the token's own frozen embedding text_words [U, L, D] is most like the frozen frame
        embedding video_cls [V, F, D] (softmax over time). The observed side has nothing to
        learn but its sharpness, so it is the same on unseen scenes as on training ones."""
        if text_words is None or video_cls is None:
            raise ValueError("reranker: reranker.word_timing_term needs text_words (each "
                             "caption token's frozen embedding: attach_word_embeddings) and "
                             "video_cls")
        with torch.autocast(device_type=text.device.type, enabled=False):
            similarity, words, attendable, frames = self._word_frame_similarity(
                text_words, video_cls, frame_mask, text_index, video_index)
            if getattr(self, "word_centred", False):  # pickled before the option: plain
                # what every word of the caption shares (its mean unit embedding) is taken
                # out, so a frame that resembles all words alike cannot draw them all to it
                real = text_mask[text_index].float()  # [B, L]
                shared = (words * real.unsqueeze(-1)).sum(1) / real.sum(1, keepdim=True).clamp(
                    min=1.0)  # [B, D]
                similarity = similarity - torch.einsum("bd,bfd->bf", shared, frames).unsqueeze(1)
            similarity = similarity * self.word_sharpness.exp()
            salience = None
            if getattr(self, "word_salience", None) is not None:  # pickled before it: none
                # how far the token's (sharpened) similarity moves over the real frames
                high = similarity.masked_fill(~attendable[:, None, :], float("-inf")).amax(-1)
                low = similarity.masked_fill(~attendable[:, None, :], float("inf")).amin(-1)
                salience = (high - low).detach()  # [B, L]; the same played backwards
            similarity = similarity.masked_fill(~attendable[:, None, :], float("-inf"))
            place = _relative_places(attendable.float())  # [B, F]
            observed = torch.einsum("blf,bf->bl", similarity.softmax(dim=-1), place)
        when, importance = self.word_when(text).float().unbind(dim=-1)  # [U, L]
        if salience is None:
            importance = importance.masked_fill(~text_mask, float("-inf")).softmax(dim=1)
            return torch.tanh(when)[text_index], importance[text_index], observed
        importance = importance[text_index] + self.word_salience.float() * salience  # [B, L]
        importance = importance.masked_fill(~text_mask[text_index], float("-inf")).softmax(dim=1)
        return torch.tanh(when)[text_index], importance, observed

    def grounding_times(self, text: torch.Tensor, text_mask: torch.Tensor,
                        text_index: torch.Tensor, visual: torch.Tensor,
                        frame_mask: torch.Tensor, video_index: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the grounding term compares, for pairs (caption text_index[i], video
        video_index[i]) of encode_text's states [U, L, H] and encode_video's tokens
        [V, F, T, H]: per token and head the expected time read from the text alone
        [B, L, G] (tanh, in [-1, 1]), its importance [B, L, G] (softmax over the caption's
        real tokens), and the observed time [B, G, L] (where over the clip's real frames,
        in [-1, 1], the token's best-matching patch tokens are, softmax over time)."""
        heads = getattr(self, "ground_heads", 1)  # re-rankers pickled before heads: one

        def split(x: torch.Tensor) -> torch.Tensor:  # [..., H] -> [..., G, H/G], unit norm
            return F.normalize(x.unflatten(-1, (heads, -1)), dim=-1)

        keys = split(self.ground_text(text))[text_index]  # [B, L, G, h]
        # the patch tokens (content and place only): the frame CLS has seen the whole clip
        content = visual[:, :, 1:] if visual.shape[2] > 1 else visual
        tokens = split(self.ground_video(content))[video_index]  # [B, F, M, G, h]
        similarity = torch.einsum("blgh,bftgh->bglft", keys, tokens).amax(dim=-1)  # [B,G,L,F]
        attendable = self._attendable_frames(frame_mask)[video_index]  # [B, F]
        similarity = (similarity * self.ground_sharpness.exp()).masked_fill(
            ~attendable[:, None, None, :], float("-inf"))
        place = _relative_places(attendable.to(tokens.dtype))  # [B, F]
        observed = torch.einsum("bglf,bf->bgl", similarity.softmax(dim=-1), place)  # [B, G, L]
        when, importance = self.ground_when(text).unflatten(-1, (2, heads)).unbind(dim=-2)
        if getattr(self, "ground_mention", None) is not None:
            # each token's place among its caption's real tokens: -1 first, +1 last
            mention = _relative_places(text_mask.to(when.dtype))  # [U, L]
            when = when + mention.unsqueeze(-1) * self.ground_mention.to(when.dtype)
        if getattr(self, "ground_cursor", None) is not None:
            # the cursor: what the caption's earlier real tokens moved it by (exclusive sum)
            moves = self.ground_cursor(text).masked_fill(~text_mask.unsqueeze(-1), 0.0)
            when = when + moves.cumsum(dim=1) - moves  # [U, L, G]
        importance = importance.masked_fill(~text_mask.unsqueeze(-1), float("-inf")).softmax(
            dim=1)  # [U, L, G], over each caption's tokens
        return torch.tanh(when)[text_index], importance[text_index], observed

    def match(
        self,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        visual: torch.Tensor,
        frame_mask: torch.Tensor,
        text_index: torch.Tensor | None = None,
        video_index: torch.Tensor | None = None,
        text_eot: torch.Tensor | None = None,
        video_cls: torch.Tensor | None = None,
        return_grounding: bool = False,
        text_words: torch.Tensor | None = None,
        video_patches: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """VTM logits [B] of encode_video's tokens visual [V, F, T, H] (frame_mask [V, F])
        with text tokens [U, L, Wt] (mask [U, L]); pair i reads caption text_index[i] and
        video video_index[i] (defaults: caption i, video i), so a caption or a video in many
        pairs has its own path (text states, memory keys) computed once. The
        frozen-similarity term reads the captions' embeddings text_eot [U, D] and the
        videos' frame embeddings video_cls [V, F, D]; the word-timing term reads those and
        each caption token's own frozen embedding text_words [U, L, D]; the match term
        with reranker.match_video=frames reads video_cls and video_patches [V, F, P, Wv]. With
        `return_grounding`: (logits, the grounding term's `grounding_times` of every pair, or
        None without the term)."""
        logits, grounding = self._match(text_tokens, text_mask, visual, frame_mask, text_index,
                                        video_index, text_eot, video_cls, text_words,
                                        video_patches)
        return (logits, grounding) if return_grounding else logits

    def _match(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, visual: torch.Tensor,
               frame_mask: torch.Tensor, text_index: torch.Tensor | None,
               video_index: torch.Tensor | None, text_eot: torch.Tensor | None,
               video_cls: torch.Tensor | None, text_words: torch.Tensor | None = None,
               video_patches: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        num_videos, frames, per_frame, hidden = visual.shape
        if video_index is None:
            video_index = torch.arange(num_videos, device=visual.device)
        batch = video_index.shape[0]
        if text_index is None:
            text_index = torch.arange(text_tokens.shape[0], device=visual.device)
        if (text_index.shape != (batch,) or video_index.shape != (batch,)
                or frame_mask.shape != (num_videos, frames)):
            raise ValueError(
                f"reranker: {num_videos} videos, text_index {tuple(text_index.shape)}, "
                f"video_index {tuple(video_index.shape)} and frame_mask "
                f"{tuple(frame_mask.shape)} do not pair up"
            )
        # positions past every caption's end are padding for all: drop them before any work
        real = text_mask.bool().any(dim=0).nonzero()
        length = int(real.max()) + 1 if len(real) else 1
        text_tokens, text_mask = text_tokens[:, :length], text_mask[:, :length]
        if text_words is not None:
            text_words = text_words[:, :length]
        text = self.encode_text(text_tokens, text_mask, text_eot, text_words)  # [U, L, H]
        text_padding = ~text_mask.bool()  # [U, L]
        attendable = self._attendable_frames(frame_mask.bool())[video_index]  # [B, F]
        extra = 0.0
        if self.match_scale is not None:
            video = None if video_cls is None or video_patches is None else (
                video_cls, video_patches)
            extra = self._match_logit(text, text_mask.bool(), text_index, visual, video,
                                      frame_mask.bool(), video_index)
        # getattr: re-rankers pickled before the term existed have no such attribute
        if getattr(self, "frozen_scale", None) is not None:
            extra = extra + self._frozen_logit(text_eot, video_cls, frame_mask.bool(),
                                               text_index, video_index)
        grounding = None
        if self.ground_text is not None:
            grounding = self.grounding_times(text, text_mask.bool(), text_index, visual,
                                             frame_mask.bool(), video_index)
            extra = extra + self._grounding_logit(*grounding)
        if getattr(self, "word_when", None) is not None:
            extra = extra + self._word_timing_logit(*self.word_times(
                text, text_mask.bool(), text_index, text_words, video_cls, frame_mask.bool(),
                video_index))
        if getattr(self, "word_presence", None) is not None:
            extra = extra + self.word_presence_logit(text, text_mask.bool(), text_index,
                                                     text_words, video_cls, frame_mask.bool(),
                                                     video_index)
        temporal_pos = self.temporal_pos[:frames]  # [F, H]
        nq = self.num_queries

        if self.attention in ("decoupled", "spatial_only"):
            # Frame level: per frame, queries attend to that frame's T tokens.
            # Each distinct video's frames are projected to keys once: [V, F*T, H], and
            # row (pair i, frame f) reads frame f of video video_index[i].
            frame_memory = visual.reshape(num_videos, frames * per_frame, hidden)
            frame_out = self._run_level(self.frame_blocks, self.frame_queries, text,
                                        text_padding, text_index, frame_memory, None,
                                        frames, video_index)
            frame_out = self.frame_norm(frame_out).reshape(batch, frames, nq, hidden)
            # frame_out: [B, F, Q, H]
            if self.attention == "spatial_only":
                weights = attendable.to(frame_out.dtype)  # [B, F]
                weights = weights / weights.sum(dim=1, keepdim=True)
                pooled = torch.einsum("bf,bfqh->bqh", weights, frame_out)  # [B, Q, H]
                return self._vtm_head(pooled) + extra, grounding
            # Video level: fresh queries attend to every real frame's query outputs.
            memory = (frame_out + temporal_pos[:, None]).reshape(batch, frames * nq, hidden)
            padding = (~attendable).repeat_interleave(nq, dim=1)  # [B, F*Q]
        elif self.attention == "temporal_only":
            memory = visual[video_index, :, 0] + temporal_pos  # frame CLS tokens [B, F, H]
            padding = ~attendable  # [B, F]
        else:  # joint: every frame's tokens at once
            memory = (visual[video_index] + temporal_pos[:, None]).reshape(
                batch, frames * per_frame, hidden)
            padding = (~attendable).repeat_interleave(per_frame, dim=1)  # [B, F*T]
        video_out = self._run_level(self.video_blocks, self.video_queries, text, text_padding,
                                    text_index, memory, padding, 1)  # [B, Q, H]
        return self._vtm_head(video_out) + extra, grounding

    def _vtm_head(self, query_out: torch.Tensor) -> torch.Tensor:
        """Query outputs [B, Q, H] -> logits [B] from their mean."""
        return self.head(self.head_norm(query_out.mean(dim=1))).squeeze(-1)

    def _run_level(
        self,
        blocks: nn.ModuleList,
        queries: torch.Tensor,
        text: torch.Tensor,
        text_padding: torch.Tensor,
        text_index: torch.Tensor,
        memory: torch.Tensor,
        memory_padding: torch.Tensor | None,
        repeats: int,
        memory_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[queries; text] through one level -> query outputs [B*repeats, Q, H].

        queries [Q, H]; text [U, L, H] of the distinct captions, text_index [B] the caption
        of each pair. repeats = 1 (video level): memory [B, K, H], one per pair. repeats = F
        (frame level): each pair's rows are repeated per frame, frame-major within a pair,
        and memory [V, F*K, H] holds each distinct video's F frames once, pair i reading
        video memory_index[i] [B]. Nothing before the first cross-attention depends on the
        frame: the first self-attention runs once per pair and is copied to every frame
        after it.
        """
        batch, nq = text_index.shape[0], queries.shape[0]
        x = queries.expand(batch, -1, -1)  # [B, Q, H]
        if not self.text_cross_attends:
            text_of_row = text_index  # [B], then [B*R] once the rows are per frame
            for index, block in enumerate(blocks):
                last = index == len(blocks) - 1
                x, text = block.queries_self_attend(x, text, text_padding, text_of_row,
                                                    update_text=not last)
                if index == 0 and repeats > 1:
                    x = x.repeat_interleave(repeats, dim=0)  # [B*R, Q, H]
                    text_of_row = text_index.repeat_interleave(repeats)  # [B*R]
                x = block.attend_memory(x, memory, memory_padding, memory_index,
                                        repeats)  # [B*R, Q, H]
            return x

        # paper form: the text rows cross-attend too, so they are per pair (and per frame)
        x = torch.cat([x, text[text_index]], dim=1)  # [B, Q+L, H]
        padding = torch.cat([text_padding.new_zeros(batch, nq), text_padding[text_index]], dim=1)
        for index, block in enumerate(blocks):
            last = index == len(blocks) - 1
            x = block.joint_self_attend(x, padding, nq, queries_only=last)  # [B(*R), Q(+L), H]
            if index == 0 and repeats > 1:
                x = x.repeat_interleave(repeats, dim=0)  # [B*R, Q(+L), H]
                padding = padding.repeat_interleave(repeats, dim=0)  # [B*R, Q+L]
            x = block.attend_memory(x, memory, memory_padding, memory_index, repeats)
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
