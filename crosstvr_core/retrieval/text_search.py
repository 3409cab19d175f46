"""Text search over an indexed corpus: "which of my videos show this?".

A query is encoded by the index's own frozen text tower, stage 1 finds the top K videos over
the whole index (the stage-1 head's video embeddings, kept in a Lance table next to the
tokens: searched exactly below a size threshold, through an ANN index above it), and the
re-ranker rescores those K from their cached tokens, read from Lance by video id. Nothing
here loads the whole index into memory except the stage-1 embeddings of a small gallery.

The stage-1 embeddings depend on the stage-1 model and on the token table's content, so
their table is named after both (`stage1_embeddings_<model key>_v<token table version>`);
a search after a re-index or with another stage-1 model builds a fresh one and drops the
stale ones of that model.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from crosstvr_core.models.encoder import FrozenEncoder
from crosstvr_core.models.reranker_ensemble import Reranker
from crosstvr_core.models.temporal_head import TemporalHead
from crosstvr_core.models.word_embeddings import caption_word_embeddings
from crosstvr_core.retrieval.pair_scoring import score_pairs
from crosstvr_core.retrieval.search import AnnIndex
from crosstvr_core.retrieval.stage1 import mean_pool_frames
from crosstvr_core.storage import VIDEO_TOKENS, VIDEOS, TokenIndex, decode_video_tokens

EMBEDDINGS_PREFIX = "stage1_embeddings"


class SearchError(ValueError):
    """A search cannot run as asked; the message names the input and what is wrong."""


@dataclass(frozen=True)
class SearchHit:
    """One returned video. stage2 is None when the video was not re-ranked."""

    rank: int  # 1-based, in the final order
    video_id: str
    uri: str
    stage1: float
    stage2: float | None
    fused: float


@dataclass(frozen=True)
class QueryResult:
    """One query's answer: the stage-1 order and the final (re-ranked) order."""

    query: str
    stage1_hits: list[SearchHit]
    hits: list[SearchHit]
    truncated: bool  # the query was longer than the text context and was cut


@dataclass
class GalleryInfo:
    """Which stage-1 embedding table answered and how it searches."""

    table: str
    size: int
    exact: bool
    build_recall: float | None  # ANN recall@k against exact search, measured at build
    built_now: bool


@dataclass
class SearchModels:
    """What answers a search: the stage-1 head (None: zero-shot meanP), the re-ranker (None:
    stage 1 only), and a description of where they came from (registry versions, run id)."""

    stage1: TemporalHead | None
    reranker: Reranker | None
    stage1_key: str  # identifies the stage-1 weights: names their embedding table
    provenance: dict[str, str] = field(default_factory=dict)


def stage1_key(head: TemporalHead | None) -> str:
    """A short hash of the stage-1 weights ("meanp" without a head)."""
    if head is None:
        return "meanp"
    digest = hashlib.sha256()
    for name, tensor in sorted(head.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


@torch.no_grad()
def stage1_video_embeddings(index: TokenIndex, head: TemporalHead | None,
                            batch_rows: int = 512) -> tuple[list[str], torch.Tensor]:
    """(video ids, unit stage-1 embeddings [N, D]) of every indexed video, read in record
    batches: bounded memory however large the index."""
    columns = ["cls", "frame_mask"] + (["patches"] if head is not None and head.vision_width
                                       else [])
    ids: list[str] = []
    embeddings: torch.Tensor | None = None  # [N, D], filled batch by batch: never two copies
    if head is not None:
        head.eval()
    data = index.video_tokens.to_lance()
    total = data.count_rows()
    for batch in data.scanner(columns=["video_id", *columns], batch_size=batch_rows
                              ).to_batches():
        if batch.num_rows == 0:
            continue
        tokens = decode_video_tokens(batch, index.shapes)
        cls, mask = tokens["video_cls"].float(), tokens["frame_mask"]
        if head is None:
            chunk = mean_pool_frames(cls, mask)
        else:
            patches = tokens.get("video_patches")
            chunk = head(cls, mask, None if patches is None else patches.float())
        if embeddings is None:
            embeddings = torch.empty(total, chunk.shape[1])
        embeddings[len(ids):len(ids) + len(chunk)] = chunk
        ids.extend(batch.column("video_id").to_pylist())
    if embeddings is None:
        raise SearchError(f"the index at {index.uri} holds no video tokens: nothing to search")
    return ids, embeddings[:len(ids)]


def open_stage1_gallery(index: TokenIndex, models: SearchModels, *, brute_force_below: int,
                        recall_k: int = 15) -> tuple[AnnIndex, GalleryInfo]:
    """The stage-1 embedding table of this model and this token-table version, built (with
    its ANN index past `brute_force_below` videos, recall measured) when missing."""
    version = index.video_tokens.version
    prefix = f"{EMBEDDINGS_PREFIX}_{models.stage1_key}_v"
    name = f"{prefix}{version}"
    tables = index.db.list_tables().tables
    built_now = name not in tables
    if built_now:
        ids, vectors = stage1_video_embeddings(index, models.stage1)
        gallery = AnnIndex.build(index.uri, vectors, ids, table_name=name,
                                 brute_force_below=brute_force_below,
                                 recall_k=min(recall_k, len(ids)))
        for stale in tables:  # older token versions of the same model
            if stale.startswith(prefix) and stale != name:
                index.db.drop_table(stale)
    else:
        gallery = AnnIndex.open(index.uri, table_name=name)
    recall = getattr(gallery, "build_recall", None)
    return gallery, GalleryInfo(name, len(gallery), gallery.brute_force,
                                None if recall is None else float(recall), built_now)


class _QueryTokens:
    """Caption-side TokenSource over encoded queries, video side over candidate tokens."""

    def __init__(self, text_eot: torch.Tensor, text_tokens: torch.Tensor,
                 text_mask: torch.Tensor, video: dict[str, torch.Tensor],
                 text_words: torch.Tensor | None = None) -> None:
        self.text_eot, self.text_tokens, self.text_mask = text_eot, text_tokens, text_mask
        self.text_words, self.video = text_words, video

    def text_batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        words = {} if self.text_words is None else {"text_words": self.text_words[rows]}
        return {"text_eot": self.text_eot[rows], "text_tokens": self.text_tokens[rows],
                "text_mask": self.text_mask[rows], **words}

    def video_batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {key: value[rows] for key, value in self.video.items()}


def candidate_tokens(index: TokenIndex, video_ids: list[str]) -> dict[str, torch.Tensor]:
    """Tokens of the given videos, in that order (repeats allowed), read by id from Lance."""
    found, tokens = index.video_tokens_of(video_ids)
    row_of = {v: i for i, v in enumerate(found)}
    missing = [v for v in dict.fromkeys(video_ids) if v not in row_of]
    if missing:
        raise SearchError(f"the token table at {index.uri} lacks videos {missing[:5]} that "
                          "stage 1 returned: the index changed during the search; rerun it")
    order = torch.tensor([row_of[v] for v in video_ids], dtype=torch.long)
    return {key: (value.float() if value.is_floating_point() else value)[order]
            for key, value in tokens.items()}


def check_queries(queries: list[str]) -> list[str]:
    """Queries stripped; an empty one is refused by its position."""
    cleaned = [re.sub(r"\s+", " ", q).strip() for q in queries]
    empty = [i for i, q in enumerate(cleaned) if not q]
    if not cleaned:
        raise SearchError("no query given")
    if empty:
        raise SearchError(f"query #{empty[0] + 1} is empty")
    return cleaned


def was_truncated(encoder: FrozenEncoder, text: str) -> bool:
    """Whether the text tower's context cuts this query (open_clip truncates silently)."""
    tokenizer = encoder.tokenizer
    context = int(getattr(tokenizer, "context_length", 0) or 0)
    encode = getattr(tokenizer, "encode", None)
    if not context or encode is None:
        return False
    return len(encode(text)) + 2 > context  # + start and end tokens


def check_same_encoder(index: TokenIndex, encoder: FrozenEncoder) -> None:
    """Queries must be encoded by the tower that encoded the index's captions."""
    if encoder.encoder_id != index.encoder_id:
        raise SearchError(
            f"encoder mismatch: the index at {index.uri} holds tokens of "
            f"'{index.encoder_id}', the configured encoder is '{encoder.encoder_id}'; "
            "search with the encoder config the index was built with")


class TextSearcher:
    """Answers text queries against one index with one pair of models."""

    def __init__(self, index: TokenIndex, encoder: FrozenEncoder, models: SearchModels, *,
                 brute_force_below: int, fusion_score: str = "logit",
                 batch_size: int = 256, device: str = "cpu") -> None:
        check_same_encoder(index, encoder)
        self.index, self.encoder, self.models = index, encoder, models
        self.fusion_score, self.batch_size, self.device = fusion_score, batch_size, device
        self.gallery, self.gallery_info = open_stage1_gallery(
            index, models, brute_force_below=brute_force_below)
        # seconds spent per stage over every search so far: where a batch's time goes
        self.seconds: dict[str, float] = defaultdict(float)

    @torch.no_grad()
    def encode(self, queries: list[str]) -> dict[str, torch.Tensor]:
        """Queries -> stage-1 embeddings [Q, D] and the re-ranker's token inputs."""
        eot, tokens, lengths = self.encoder.encode_captions(queries)
        mask = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
        head = self.models.stage1
        if head is None:
            embedding = F.normalize(eot.float(), dim=-1)
        else:
            embedding = head.eval().encode_text(eot, tokens, mask)
        encoded = {"embedding": embedding, "eot": eot, "tokens": tokens, "mask": mask}
        if self.models.reranker is not None and self.models.reranker.reads_word_embeddings:
            encoded["words"] = caption_word_embeddings(self.encoder, queries,
                                                       tokens.shape[1]).float()
        return encoded

    def rerank_scores(self, encoded: dict[str, torch.Tensor], query_rows: torch.Tensor,
                      videos: dict[str, torch.Tensor]) -> torch.Tensor:
        """Re-ranker scores [N] of pairs (query row i, video row i of `videos`, the
        candidates' tokens as `candidate_tokens` reads them), as fusion reads them."""
        source = _QueryTokens(encoded["eot"], encoded["tokens"], encoded["mask"], videos,
                              encoded.get("words"))
        logits = score_pairs(self.models.reranker, source, query_rows, source,
                             torch.arange(len(query_rows)), self.batch_size, device=self.device,
                             precision="fp32")
        return torch.sigmoid(logits) if self.fusion_score == "prob" else logits

    def search(self, queries: list[str], k: int, *, rerank: bool = True,
               candidates: int | None = None) -> list[QueryResult]:
        """Top k videos per query; the re-ranker rescores the stage-1 top `candidates`
        (default k, at least k) and they are ordered by stage 1 + w_t2v x stage 2."""
        queries = check_queries(queries)
        size = len(self.gallery)
        if k < 1:
            raise SearchError(f"k must be at least 1, got {k}")
        k = min(k, size)
        pool = min(max(candidates or k, k), size)
        started = time.perf_counter()
        encoded = self.encode(queries)
        self.seconds["encode"] += time.perf_counter() - started
        started = time.perf_counter()
        found = self.gallery.search(encoded["embedding"], pool)
        # an ANN index may find fewer than `pool` rows: it pads with "" ids
        lists = [[(v, float(score)) for v, score in zip(ids, scores.tolist(), strict=True)
                  if v] for ids, scores in zip(found.ids, found.scores, strict=True)]
        self.seconds["stage1"] += time.perf_counter() - started
        flat_ids = [v for row in lists for v, _ in row]
        rerank = rerank and self.models.reranker is not None and bool(flat_ids)
        stage2 = None
        if rerank:
            started = time.perf_counter()
            videos = candidate_tokens(self.index, flat_ids)
            self.seconds["tokens"] += time.perf_counter() - started
            started = time.perf_counter()
            rows = torch.arange(len(queries)).repeat_interleave(
                torch.tensor([len(row) for row in lists]))
            stage2 = self.rerank_scores(encoded, rows, videos).tolist()
            self.seconds["rerank"] += time.perf_counter() - started
        started = time.perf_counter()
        uris = self.index.video_uris(flat_ids)
        self.seconds["lookup"] += time.perf_counter() - started
        weight = self.models.reranker.fusion_weight_t2v if rerank else 0.0
        results, offset = [], 0
        for text, row in zip(queries, lists, strict=True):
            s2 = stage2[offset:offset + len(row)] if stage2 is not None else None
            offset += len(row)
            hits = [SearchHit(0, vid, uris.get(vid, ""), s1,
                              None if s2 is None else s2[j],
                              s1 if s2 is None else s1 + weight * s2[j])
                    for j, (vid, s1) in enumerate(row)]
            final = sorted(hits, key=lambda h: -h.fused)[:k]  # stable: ties keep stage 1's order
            results.append(QueryResult(
                text, [replace(h, rank=r + 1) for r, h in enumerate(hits[:k])],
                [replace(h, rank=r + 1) for r, h in enumerate(final)],
                was_truncated(self.encoder, text)))
        return results


def index_versions(index: TokenIndex) -> dict[str, int]:
    """The token and video table versions a search read."""
    return {VIDEO_TOKENS: index.video_tokens.version, VIDEOS: index.videos.version}
