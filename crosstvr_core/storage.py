"""Lance tables: the contract between the pipeline's steps.

One LanceDB database per dataset holds three tables:
  * `videos`       — one row per source file: identity, probe facts, status ok/failed, error;
  * `video_tokens` — the frozen encoder's per-frame CLS embeddings and patch tokens (fp16);
  * `captions`     — caption text plus its cached EOT embedding and token features (fp16).
Token columns are fixed-size lists so a row is random-accessible without decoding others.
The encoder identity lives in every row and in the table schema metadata: opening a table
with another encoder's tokens is refused, so two encoders' tokens can never mix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import torch

from crosstvr_core.token_bank import TokenBank

VIDEOS = "videos"
VIDEO_TOKENS = "video_tokens"
CAPTIONS = "captions"
STAGE1_CANDIDATES = "stage1_candidates"
ENCODER_KEY = b"crosstvr.encoder_id"
SHAPES_KEY = b"crosstvr.shapes"


class SchemaMismatchError(ValueError):
    """A table on disk has other columns than this version of crosstvr writes."""


class IndexNotFoundError(FileNotFoundError):
    """No index where one was expected; the message says how to make it."""


class EncoderMismatchError(ValueError):
    """A table holds tokens of another encoder (or other shapes) than the one asked for."""


@dataclass(frozen=True)
class TokenShapes:
    """Shapes of the cached tokens; fixed per database because token columns are fixed-size."""

    num_frames: int  # F
    embed_dim: int  # D (projected CLS / EOT)
    num_patches: int  # P
    vision_width: int  # Wv
    context_length: int  # L
    text_width: int  # Wt
    # patches per frame in the encoder's grid; > num_patches when only the M patches the CLS
    # attends to most are kept (index.keep_patches); 0 means "= num_patches"
    source_patches: int = 0
    # how frames were sampled ("uniform", or "segment:<seed>"): tokens of two samplings
    # never mix in one table, like tokens of two encoders
    sampling: str = "uniform"

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()


def videos_schema() -> pa.Schema:
    return pa.schema(
        [
            ("video_id", pa.string()),
            ("corpus", pa.string()),
            ("split", pa.string()),
            ("uri", pa.string()),
            ("content_hash", pa.string()),
            ("duration", pa.float64()),
            ("fps", pa.float64()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("size_bytes", pa.int64()),
            ("num_frames_sampled", pa.int32()),
            ("status", pa.string()),  # "ok" | "failed"
            ("error", pa.string()),
            ("error_reason", pa.string()),  # short machine-readable kind, e.g. "truncated"
            ("encoder_id", pa.string()),
            ("indexed_at", pa.timestamp("us", tz="UTC")),
            # added later (last, as Lance appends it to an older table): see ADDED_COLUMNS
            ("decode_warning", pa.string()),  # what decoding tolerated (e.g. frames short); ""
        ]
    )


#: Columns appended to a table after its first release -> the SQL value that fills them in
#: a table written before: opening such a table adds them, so an index survives an upgrade.
ADDED_COLUMNS: dict[str, dict[str, str]] = {VIDEOS: {"decode_warning": "''"}}


def video_tokens_schema(shapes: TokenShapes, encoder_id: str) -> pa.Schema:
    f, d, p, w = shapes.num_frames, shapes.embed_dim, shapes.num_patches, shapes.vision_width
    return pa.schema(
        [
            ("video_id", pa.string()),
            ("content_hash", pa.string()),
            ("encoder_id", pa.string()),
            ("frame_mask", pa.list_(pa.bool_(), f)),
            ("cls", pa.list_(pa.float16(), f * d)),  # [F, D] row-major
            ("patches", pa.list_(pa.float16(), f * p * w)),  # [F, P, Wv] row-major
            ("patch_index", pa.list_(pa.int16(), f * p)),  # [F, P] position in the grid
        ],
        metadata={ENCODER_KEY: encoder_id.encode(), SHAPES_KEY: shapes.to_json()},
    )


def captions_schema(shapes: TokenShapes, encoder_id: str) -> pa.Schema:
    d, length, w = shapes.embed_dim, shapes.context_length, shapes.text_width
    return pa.schema(
        [
            ("caption_id", pa.string()),
            ("video_id", pa.string()),
            ("split", pa.string()),
            ("text", pa.string()),
            ("meta", pa.string()),  # JSON of dataset-specific fields (e.g. group, variant)
            ("encoder_id", pa.string()),
            ("eot", pa.list_(pa.float16(), d)),  # [D]
            ("tokens", pa.list_(pa.float16(), length * w)),  # [L, Wt] row-major
            ("length", pa.int32()),
        ],
        metadata={ENCODER_KEY: encoder_id.encode(), SHAPES_KEY: shapes.to_json()},
    )


def stage1_candidates_schema() -> pa.Schema:
    """Per query (a caption, or a video for v2t), its stage-1 top-K, for hard-negative mining."""
    return pa.schema(
        [
            ("key", pa.string()),  # "<stage1 model id>|<query kind>|<query id>"
            ("stage1_model_id", pa.string()),
            ("split", pa.string()),
            ("query_kind", pa.string()),  # "caption" | "video"
            ("query_id", pa.string()),
            ("candidate_ids", pa.list_(pa.string())),  # best first
            ("scores", pa.list_(pa.float32())),
        ]
    )


def fixed_list(array: np.ndarray, dtype=np.float16) -> pa.FixedSizeListArray:
    """[N, ...] numpy -> fixed-size-list column of N rows."""
    array = np.ascontiguousarray(array, dtype=dtype)
    width = int(np.prod(array.shape[1:])) if array.ndim > 1 else 1
    return pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), width)


def fixed_list_to_numpy(column: pa.ChunkedArray | pa.Array, shape: tuple[int, ...]) -> np.ndarray:
    """Fixed-size-list column -> numpy [N, *shape] without per-row Python work."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False).copy()  # writable for torch
    return values.reshape((len(column), *shape))


def table_rows(schema: pa.Schema, columns: Mapping[str, Any]) -> pa.Table:
    """Rows given column by column (numpy arrays or lists) as a table of `schema`'s types:
    [N, ...] arrays become its fixed-size-list columns. Columns `schema` lacks are refused;
    columns it has but `columns` lacks are left out (`TokenIndex.upsert` fills defaults)."""
    unknown = sorted(set(columns) - set(schema.names))
    if unknown:
        raise ValueError(f"columns {unknown} are not in the table's schema {schema.names}")
    arrays, fields = [], []
    for name, value in columns.items():
        field = schema.field(name)
        if pa.types.is_fixed_size_list(field.type):
            arrays.append(fixed_list(np.asarray(value), field.type.value_type.to_pandas_dtype()))
        else:
            arrays.append(pa.array(value, type=field.type))
        fields.append(field)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def decode_video_tokens(table: pa.Table | pa.RecordBatch, shapes: TokenShapes
                        ) -> dict[str, torch.Tensor]:
    """`video_tokens` rows as tensors, fp16 as stored, for the columns read (cls, patches,
    frame_mask): video_cls [N, F, D], video_patches [N, F, P, Wv], frame_mask [N, F] bool."""
    s = shapes
    out = {}
    if "cls" in table.column_names:
        out["video_cls"] = torch.from_numpy(
            fixed_list_to_numpy(table.column("cls"), (s.num_frames, s.embed_dim)))
    if "patches" in table.column_names:
        out["video_patches"] = torch.from_numpy(fixed_list_to_numpy(
            table.column("patches"), (s.num_frames, s.num_patches, s.vision_width)))
    if "frame_mask" in table.column_names:
        out["frame_mask"] = torch.from_numpy(
            fixed_list_to_numpy(table.column("frame_mask"), (s.num_frames,)).astype(bool))
    return out


def decode_caption_tokens(table: pa.Table, shapes: TokenShapes) -> dict[str, torch.Tensor]:
    """`captions` rows (columns tokens, length) as tensors: text_tokens [N, L, Wt] (fp16 as
    stored), text_mask [N, L] (the first `length` positions)."""
    s = shapes
    lengths = torch.from_numpy(table.column("length").to_numpy().astype(np.int64))
    return {
        "text_tokens": torch.from_numpy(fixed_list_to_numpy(
            table.column("tokens"), (s.context_length, s.text_width))),
        "text_mask": torch.arange(s.context_length)[None, :] < lengths[:, None],
    }


def _sql_string(value: str) -> str:
    """A SQL string literal for Lance filters (quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def _where_in(column: str, values: list[str]) -> str:
    """A Lance filter: `column` is one of `values` (each quoted)."""
    return f"{column} IN ({', '.join(_sql_string(v) for v in values)})"


def _delete_where_in(table, column: str, values: list[str], chunk: int = 500) -> None:
    """Delete rows whose `column` is in `values`, in chunks so the filter stays small."""
    for start in range(0, len(values), chunk):
        table.delete(_where_in(column, values[start:start + chunk]))


class TokenIndex:
    """The three tables of one dataset, bound to one encoder."""

    def __init__(self, uri: str | Path, encoder_id: str, shapes: TokenShapes,
                 storage_options: dict[str, str] | None = None,
                 versions: dict[str, int] | None = None):
        """`versions` (table -> version) opens those versions read-only: a later step then
        reads exactly what the index step wrote, even if a re-index commits meanwhile."""
        self.uri = str(uri)
        self.encoder_id = encoder_id
        self.shapes = shapes
        if "://" not in self.uri:  # object-store URIs need no directory
            Path(self.uri).mkdir(parents=True, exist_ok=True)
        self.db = lancedb.connect(self.uri, storage_options=storage_options)
        self.videos = self._open_or_create(VIDEOS, videos_schema())
        self.video_tokens = self._open_or_create(
            VIDEO_TOKENS, video_tokens_schema(shapes, encoder_id)
        )
        self.captions = self._open_or_create(CAPTIONS, captions_schema(shapes, encoder_id))
        for name, version in (versions or {}).items():
            getattr(self, name).checkout(version)

    @classmethod
    def open_existing(cls, uri: str | Path, storage_options: dict[str, str] | None = None
                      ) -> TokenIndex:
        """An index that was written before, bound to the encoder and shapes its tables
        record (for readers that did not index it: search, experiments)."""
        if "://" not in str(uri) and not Path(uri).is_dir():
            raise IndexNotFoundError(f"no index at {uri}: index the dataset first "
                                     "(`crosstvr index` or the crosstvr/reindex deployment)")
        db = lancedb.connect(str(uri), storage_options=storage_options)
        if VIDEO_TOKENS not in db.list_tables().tables:
            raise IndexNotFoundError(f"no '{VIDEO_TOKENS}' table in {uri}: index the dataset "
                                     "first (`crosstvr index` or the crosstvr/reindex deployment)")
        meta = db.open_table(VIDEO_TOKENS).schema.metadata or {}
        if ENCODER_KEY not in meta or SHAPES_KEY not in meta:
            raise SchemaMismatchError(f"table '{VIDEO_TOKENS}' at {uri} records no encoder "
                                      "or token shapes: it was not written by crosstvr")
        shapes = TokenShapes(**json.loads(meta[SHAPES_KEY]))
        return cls(uri, meta[ENCODER_KEY].decode(), shapes, storage_options)

    def _open_or_create(self, name: str, schema: pa.Schema):
        if name not in self.db.list_tables().tables:
            # exist_ok: another run may create it between the check and here
            return self.db.create_table(name, schema=schema, exist_ok=True)
        table = self.db.open_table(name)
        missing = schema.names[len(table.schema.names):]
        added = ADDED_COLUMNS.get(name, {})
        if (missing and table.schema.names == schema.names[: len(table.schema.names)]
                and set(missing) <= added.keys()):
            # a table written before these columns existed: add them, filled (one commit)
            table.add_columns({column: added[column] for column in missing})
        if table.schema.names != schema.names:
            raise SchemaMismatchError(
                f"table '{name}' at {self.uri} has columns {table.schema.names}, this version "
                f"writes {schema.names}: index into a new database (another data.name) or "
                "delete the old one"
            )
        if schema.metadata:
            stored = table.schema.metadata or {}
            if stored.get(ENCODER_KEY) != schema.metadata[ENCODER_KEY]:
                raise EncoderMismatchError(
                    f"table '{name}' at {self.uri} holds tokens of encoder "
                    f"'{stored.get(ENCODER_KEY, b'?').decode()}', not '{self.encoder_id}': "
                    "index into another database (another data.name) or delete it"
                )
            if stored.get(SHAPES_KEY) != schema.metadata[SHAPES_KEY]:
                raise EncoderMismatchError(
                    f"table '{name}' at {self.uri} holds token shapes "
                    f"{stored.get(SHAPES_KEY, b'?').decode()}, not "
                    f"{schema.metadata[SHAPES_KEY].decode()}: index into another database "
                    "(another data.name) or delete it"
                )
        return table

    # --- writes -----------------------------------------------------------------------
    def _check_rows(self, name: str, rows: pa.Table) -> None:
        if "encoder_id" in rows.column_names:
            ids = set(rows.column("encoder_id").to_pylist()) - {self.encoder_id, ""}
            if ids:
                raise EncoderMismatchError(
                    f"rows for table '{name}' carry encoder_id {sorted(ids)}, table is "
                    f"'{self.encoder_id}'"
                )

    def upsert(self, name: str, rows: pa.Table | Mapping[str, Any], key: str
               ) -> dict[str, int]:
        """Insert new keys, replace existing ones, in one atomic commit.

        `rows`: a table, or its columns (converted to the table's types by `table_rows`)."""
        table = getattr(self, name)
        if not isinstance(rows, pa.Table):
            rows = table_rows(table.schema, rows)
        if rows.num_rows == 0:
            return {"inserted": 0, "updated": 0}
        self._check_rows(name, rows)
        rows = self._with_defaults(rows, table.schema)
        missing = [c for c in table.schema.names if c not in rows.column_names]
        if missing:
            raise ValueError(f"rows for table '{name}' lack column(s) {missing}")
        rows = rows.select(table.schema.names).cast(table.schema)
        result = (
            table.merge_insert(key).when_matched_update_all().when_not_matched_insert_all()
            .execute(rows)
        )
        return {"inserted": result.num_inserted_rows, "updated": result.num_updated_rows}

    def _with_defaults(self, rows: pa.Table, schema: pa.Schema) -> pa.Table:
        """Fill columns a writer may leave out: no error reason, every patch in grid order."""
        n = rows.num_rows
        for text in ("error_reason", "decode_warning"):
            if text in schema.names and text not in rows.column_names:
                rows = rows.append_column(text, pa.array([""] * n, pa.string()))
        if "patch_index" in schema.names and "patch_index" not in rows.column_names:
            s = self.shapes
            grid = np.broadcast_to(np.arange(s.num_patches, dtype=np.int16),
                                   (n, s.num_frames, s.num_patches))
            rows = rows.append_column("patch_index", fixed_list(grid, np.int16))
        return rows

    def write_stage1_candidates(
        self, stage1_model_id: str, split: str, query_kind: str, query_ids: list[str],
        candidate_ids: list[list[str]], scores: np.ndarray,
    ) -> int:
        """Upsert the top-K candidates of each query under a stage-1 model id."""
        if STAGE1_CANDIDATES not in self.db.list_tables().tables:
            self.db.create_table(STAGE1_CANDIDATES, schema=stage1_candidates_schema(),
                                 exist_ok=True)
        table = self.db.open_table(STAGE1_CANDIDATES)
        n = len(query_ids)
        rows = pa.table({
            "key": [f"{stage1_model_id}|{query_kind}|{q}" for q in query_ids],
            "stage1_model_id": [stage1_model_id] * n,
            "split": [split] * n,
            "query_kind": [query_kind] * n,
            "query_id": query_ids,
            "candidate_ids": candidate_ids,
            "scores": [row.astype(np.float32).tolist() for row in np.asarray(scores)],
        }, schema=stage1_candidates_schema())
        table.merge_insert("key").when_matched_update_all().when_not_matched_insert_all() \
            .execute(rows)
        return n

    def stage1_candidates(self, stage1_model_id: str, split: str, query_kind: str
                          ) -> pa.Table | None:
        """The stored top-K lists (query_id, candidate_ids, scores) of one stage-1 model,
        split and query kind; None when no stage 1 has written any."""
        if STAGE1_CANDIDATES not in self.db.list_tables().tables:
            return None
        return self.db.open_table(STAGE1_CANDIDATES).to_lance().to_table(
            columns=["query_id", "candidate_ids", "scores"],
            filter=f"stage1_model_id = {_sql_string(stage1_model_id)} "
                   f"AND split = {_sql_string(split)} AND query_kind = {_sql_string(query_kind)}")

    def delete_videos(self, video_ids: list[str]) -> None:
        """Remove videos (and their tokens and captions) that left the corpus."""
        for table in (self.video_tokens, self.captions, self.videos):
            _delete_where_in(table, "video_id", video_ids)

    def delete_captions_except(
        self, caption_ids: set[str], of_videos: set[str] | None = None
    ) -> int:
        """Drop captions no longer in the dataset's annotation file; returns how many.

        `of_videos` limits this to captions of those videos (the others are left alone).
        """
        table = self.captions.to_lance().to_table(columns=["caption_id", "video_id"])
        existing = {
            cid for cid, vid in zip(table.column("caption_id").to_pylist(),
                                    table.column("video_id").to_pylist(), strict=True)
            if of_videos is None or vid in of_videos
        }
        stale = sorted(existing - caption_ids)
        _delete_where_in(self.captions, "caption_id", stale)
        return len(stale)

    def compact(self) -> None:
        """Merge the small files many upserts leave; prune no version. (LanceDB's optimize()
        would also remove every version older than 7 days, named by a run or not, and fails
        on tagged ones: old versions go only through `table_retention`, which keeps what runs
        and registered models name.)"""
        for table in (self.videos, self.video_tokens, self.captions):
            table.to_lance().optimize.compact_files()
            table.checkout_latest()
            self._index_ids(table)

    @staticmethod
    def _index_ids(table) -> None:
        """A BTREE index on the table's id column (built once, then extended to new rows):
        reads by id (search's candidates and their files, upserts' key matching) stay a
        look-up instead of a scan of every id, at a million videos too."""
        column = table.schema.names[0]  # video_id / caption_id: each table's key comes first
        dataset = table.to_lance()
        if dataset.count_rows() == 0:
            return
        existing = [index["name"] for index in dataset.list_indices()
                    if index["fields"] == [column]]
        if not existing:
            dataset.create_scalar_index(column, "BTREE", name=f"{column}_btree")
        elif dataset.stats.index_stats(existing[0])["num_unindexed_rows"]:
            dataset.optimize.optimize_indices()  # commits a version: only when rows are new
        else:
            return
        table.checkout_latest()

    # --- reads ------------------------------------------------------------------------
    def versions(self) -> dict[str, int]:
        """Current version of each table: what a run read or wrote, for lineage."""
        return {
            VIDEOS: self.videos.version,
            VIDEO_TOKENS: self.video_tokens.version,
            CAPTIONS: self.captions.version,
        }

    def video_states(self) -> dict[str, tuple[str, str]]:
        """video_id -> (content_hash, status) of every indexed video."""
        table = self.videos.to_lance().to_table(columns=["video_id", "content_hash", "status"])
        tokens = set(
            self.video_tokens.to_lance().to_table(columns=["video_id"]).column("video_id")
            .to_pylist()
        )
        out = {}
        for vid, chash, status in zip(*(table.column(c).to_pylist() for c in table.column_names),
                                      strict=True):
            # an "ok" row without its tokens (a kill between the two commits) is redone
            out[vid] = (chash, status if vid in tokens or status != "ok" else "incomplete")
        return out

    def caption_texts(self) -> dict[str, str]:
        """caption_id -> text of every encoded caption (to skip unchanged ones)."""
        table = self.captions.to_lance().to_table(columns=["caption_id", "text"])
        return dict(zip(table.column("caption_id").to_pylist(), table.column("text").to_pylist(),
                        strict=True))

    def load_token_bank(self, split: str, memory_budget_gb: float | None = None) -> TokenBank:
        """All ok videos of `split` and their captions, as fp16 tensors aligned by row (sorted
        by id). Only the split's rows are read. Patch tokens larger than `memory_budget_gb`
        (None: no limit) stay in the table as `DiskPatches`, read by row per batch."""
        from crosstvr_core.disk_tokens import DiskPatches  # disk_tokens decodes with this module

        s = self.shapes
        videos = self.videos.to_lance().to_table(
            columns=["video_id"], filter=f"split = {_sql_string(split)} AND status = 'ok'"
        )
        keep = set(videos.column("video_id").to_pylist())
        token_data = self.video_tokens.to_lance()  # one version for every read below
        stored = token_data.to_table(columns=["video_id"]).column("video_id").to_pylist()
        found = sorted((vid, offset) for offset, vid in enumerate(stored) if vid in keep)
        video_ids = [vid for vid, _ in found]
        offsets = np.array([offset for _, offset in found], dtype=np.int64)
        small = decode_video_tokens(token_data.take(offsets.tolist(),
                                                    columns=["frame_mask", "cls"]), s)
        patches = DiskPatches(token_data, offsets, s)
        if memory_budget_gb is None or patches.nbytes <= memory_budget_gb * 2**30:
            patches = patches.to_memory()
        row_of = {vid: i for i, vid in enumerate(video_ids)}
        captions = self.captions.to_lance().to_table(
            columns=["caption_id", "video_id", "eot", "tokens", "length"],
            filter=f"split = {_sql_string(split)}",
        ).sort_by("caption_id")
        cap_rows = [i for i, v in enumerate(captions.column("video_id").to_pylist()) if v in row_of]
        captions = captions.take(pa.array(cap_rows, pa.int64()))
        return TokenBank(
            video_ids=video_ids,
            video_cls=small["video_cls"],
            video_patches=patches,
            frame_mask=small["frame_mask"],
            caption_ids=captions.column("caption_id").to_pylist(),
            text_eot=torch.from_numpy(fixed_list_to_numpy(captions.column("eot"), (s.embed_dim,))),
            **decode_caption_tokens(captions, s),
            caption_video=torch.tensor(
                [row_of[v] for v in captions.column("video_id").to_pylist()], dtype=torch.long),
        )

    def video_tokens_of(self, video_ids: list[str]) -> tuple[list[str], dict[str, torch.Tensor]]:
        """The stored tokens of these videos, read by id (never the whole table): the ids
        found, in table order, and their tensors as `decode_video_tokens` gives them."""
        table = self.video_tokens.to_lance().to_table(
            columns=["video_id", "frame_mask", "cls", "patches"],
            filter=_where_in("video_id", list(dict.fromkeys(video_ids))))
        return table.column("video_id").to_pylist(), decode_video_tokens(table, self.shapes)

    def video_uris(self, video_ids: list[str]) -> dict[str, str]:
        """video id -> the file it was indexed from, for the ids the table has."""
        if not video_ids:
            return {}
        table = self.videos.to_lance().to_table(
            columns=["video_id", "uri"], filter=_where_in("video_id", list(dict.fromkeys(video_ids))))
        return dict(zip(table.column("video_id").to_pylist(), table.column("uri").to_pylist(),
                        strict=True))

    def caption_meta(self, caption_ids: list[str]) -> list[dict]:
        """Dataset-specific fields of captions, in the order asked."""
        table = self.captions.to_lance().to_table(columns=["caption_id", "meta"])
        meta = dict(zip(table.column("caption_id").to_pylist(),
                        table.column("meta").to_pylist(), strict=True))
        return [json.loads(meta.get(c) or "{}") for c in caption_ids]
