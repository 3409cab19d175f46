"""Index a corpus: decode (Ray tasks) -> frozen tokens (Ray actor pool) -> Lance upserts.

Re-indexing is an upsert keyed on video_id + content hash: unchanged videos are skipped
before decoding, changed ones replaced, new ones added, removed ones deleted. Token rows
are committed before their `videos` row turns "ok", so a kill between the two commits
leaves a video that the next run simply redoes.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import logging
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass

import numpy as np
import ray
import torch
from prefect import task

from crosstvr_core.config import CrossTVRConfig
from crosstvr_core.data.datasets import RetrievalDataset
from crosstvr_core.models.encoder import FrozenEncoder
from crosstvr_core.pipeline import load_encoder
from crosstvr_core.storage import CAPTIONS, VIDEO_TOKENS, VIDEOS, TokenIndex, TokenShapes
from tasks.index_decode import decode_batch
from tasks.runtime import failure_reason

log = logging.getLogger(__name__)
# decode tasks fork ffmpeg in processes that imported lancedb; they never touch Lance after
# the fork, so lancedb's fork warning (one per clip) is noise here
warnings.filterwarnings("ignore", message="lancedb fork support is experimental")
CAPTION_WRITE_ROWS = 512


@dataclass(frozen=True)
class IndexRef:
    """What later steps need to read the index: where, which encoder, which versions."""

    uri: str
    encoder_id: str
    shapes: dict
    versions: dict  # table -> Lance version this run produced
    counts: dict
    read_versions: dict | None = None  # table -> Lance version before this run
    storage_options: dict | None = None  # object-store credentials / endpoint (index.*)

    def open(self, pinned: bool = True) -> TokenIndex:
        """The tables at the versions this index step wrote (`pinned`), or the latest."""
        return TokenIndex(self.uri, self.encoder_id, TokenShapes(**self.shapes),
                          self.storage_options, self.versions if pinned else None)


@dataclass(frozen=True)
class IndexResult:
    """An index run: the reference for later steps, plus why each failed video failed."""

    ref: IndexRef
    failures: dict[str, list[tuple[str, str]]]  # reason -> [(video_id, error)]


def token_shapes(cfg: CrossTVRConfig, encoder: FrozenEncoder) -> TokenShapes:
    keep = cfg.index.keep_patches
    if keep is not None and keep > encoder.num_patches:
        raise ValueError(
            f"index.keep_patches={keep}: encoder '{encoder.encoder_id}' has only "
            f"{encoder.num_patches} patches per frame"
        )
    return TokenShapes(
        num_frames=cfg.sampling.num_frames, embed_dim=encoder.embed_dim,
        num_patches=keep or encoder.num_patches, vision_width=encoder.vision_width,
        context_length=encoder.context_length, text_width=encoder.text_width,
        source_patches=encoder.num_patches if keep else 0,
        sampling="uniform" if cfg.sampling.method == "uniform"
        else f"{cfg.sampling.method}:{cfg.sampling.seed}",
    )


# --- Ray Data stages ------------------------------------------------------------------
class _EncoderActor:
    """Ray actor base: loads the frozen encoder once per actor (GPU when granted)."""

    def __init__(self, cfg_json: str):
        cfg = CrossTVRConfig.model_validate_json(cfg_json)
        torch.set_num_threads(cfg.encoder.torch_threads)
        device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        self.encoder = load_encoder(cfg, device=device)
        self.shapes = token_shapes(cfg, self.encoder)
        self.cfg = cfg


class FrameEncoderActor(_EncoderActor):
    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        frames = batch.pop("frames")  # [B, F, S, S, 3]
        b, f = frames.shape[:2]
        s = self.shapes
        cls = np.zeros((b, f, s.embed_dim), np.float16)
        patches = np.zeros((b, f, s.num_patches, s.vision_width), np.float16)
        patch_index = np.broadcast_to(np.arange(s.num_patches, dtype=np.int16),
                                      (b, f, s.num_patches)).copy()
        rows = np.flatnonzero(batch["status"] == "ok")
        if rows.size:
            flat = frames[rows].reshape(-1, *frames.shape[2:])  # [B' * F, S, S, 3]
            chunk = self.cfg.encoder.frame_batch_size
            outs = [self._encode(flat[i:i + chunk]) for i in range(0, len(flat), chunk)]
            # [B' * F, ...] -> [B', F, ...]
            cls[rows] = torch.cat([o[0] for o in outs]).view(len(rows), f, -1).half().numpy()
            patches[rows] = (
                torch.cat([o[1] for o in outs]).view(len(rows), f, *patches.shape[2:])
                .half().numpy()
            )
            if self.cfg.index.keep_patches:
                patch_index[rows] = (
                    torch.cat([o[2] for o in outs]).view(len(rows), f, -1).numpy()
                )
        batch["cls"], batch["patches"], batch["patch_index"] = cls, patches, patch_index
        return batch

    def _encode(self, frames: np.ndarray) -> tuple[torch.Tensor, ...]:
        keep = self.cfg.index.keep_patches
        if keep:
            return self.encoder.encode_frames_selected(frames, keep)
        return self.encoder.encode_frames(frames)


class CaptionEncoderActor(_EncoderActor):
    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        texts = [str(t) for t in batch["text"]]
        chunk = self.cfg.encoder.text_batch_size
        eots, tokens, lengths = [], [], []
        for s in range(0, len(texts), chunk):
            eot, tok, length = self.encoder.encode_captions(texts[s:s + chunk])
            eots.append(eot)
            tokens.append(tok)
            lengths.append(length)
        batch["eot"] = torch.cat(eots).half().numpy()  # [B, D]
        batch["tokens"] = torch.cat(tokens).half().numpy()  # [B, L, Wt]
        batch["length"] = torch.cat(lengths).numpy().astype(np.int32)
        return batch


# --- Lance writes -----------------------------------------------------------------------
def _write_video_batch(index: TokenIndex, batch: dict, corpus: str) -> dict[str, int]:
    """Upsert a decoded batch: tokens of the ok videos, the row of every video not skipped
    (column types are the tables' schemas, storage.table_rows)."""
    status = batch["status"]
    done = np.flatnonzero(status != "skip")
    ok = np.flatnonzero(status == "ok")
    if ok.size:
        index.upsert(VIDEO_TOKENS, {
            "video_id": batch["video_id"][ok],
            "content_hash": batch["content_hash"][ok],
            "encoder_id": [index.encoder_id] * ok.size,
            **{k: batch[k][ok] for k in ("frame_mask", "cls", "patches", "patch_index")},
        }, key="video_id")
    if done.size:
        now = dt.datetime.now(dt.UTC)
        index.upsert(VIDEOS, {
            **{k: batch[k][done] for k in ("video_id", "split", "content_hash", "duration", "fps",
                                           "width", "height", "size_bytes", "error",
                                           "error_reason", "decode_warning")},
            "corpus": [corpus] * done.size,
            "uri": batch["path"][done],
            "num_frames_sampled": batch["frame_mask"][done].sum(1),
            "status": status[done],
            "encoder_id": [index.encoder_id] * done.size,
            "indexed_at": [now] * done.size,
        }, key="video_id")
    return {s: int((status == s).sum()) for s in ("ok", "failed", "skip")}


def _write_caption_batch(index: TokenIndex, batch: dict) -> int:
    n = len(batch["caption_id"])
    index.upsert(CAPTIONS, {
        **{k: batch[k] for k in ("caption_id", "video_id", "split", "text", "meta", "eot",
                                 "tokens", "length")},
        "encoder_id": [index.encoder_id] * n,
    }, key="caption_id")
    return n


def _actor_stage_args(cfg: CrossTVRConfig) -> dict:
    return {
        "compute": ray.data.ActorPoolStrategy(size=cfg.ray.encode_pool_size),
        "num_cpus": cfg.ray.encode_num_cpus,
        "num_gpus": cfg.ray.encode_num_gpus,
        "fn_constructor_kwargs": {"cfg_json": cfg.model_dump_json()},
        # an actor killed for memory on every batch fails the step with the reason after
        # this many restarts instead of looping for ever (Ray Data's default, -1); bounded
        # restarts also leave no restarted actor behind a failed run to hold its CPUs.
        # Its batch is retried for as long as the actor may come back: a bounded count
        # of task retries is spent within a second on "connection refused" while an
        # actor of a dead node is rescheduled elsewhere, failing a run that would finish
        "max_restarts": cfg.ray.encode_max_restarts,
        "max_task_retries": -1,
    }


def remove_missing_videos(cfg: CrossTVRConfig, dataset: RetrievalDataset, index: TokenIndex,
                          states: dict[str, tuple[str, str]]) -> int:
    """Delete the videos (their tokens and captions) that left the corpus, when
    index.remove_missing; `states` is index.video_states(). Returns how many."""
    if not cfg.index.remove_missing:
        return 0
    removed = sorted(set(states) - {v.video_id for v in dataset.videos})
    index.delete_videos(removed)
    return len(removed)


def index_videos(cfg: CrossTVRConfig, dataset: RetrievalDataset, index: TokenIndex,
                 size: int, failures: dict[str, list[tuple[str, str]]] | None = None,
                 states: dict[str, tuple[str, str]] | None = None,
                 stop: threading.Event | None = None) -> dict[str, int]:
    """Decode + encode every new, changed or previously failed video; skip the rest.

    `failures`, when given, collects reason -> [(video_id, error)] for the run's summary;
    `states` is index.video_states() when the caller has read it already; once `stop` is
    set the pass returns after the batch it is writing (what it committed stays).
    """
    states = index.video_states() if states is None else states
    failed_before = {vid for vid, (_, status) in states.items() if status == "failed"}
    items = [
        {"video_id": v.video_id, "path": v.path, "split": v.split,
         # only a video whose last index succeeded may be skipped
         "known_hash": states[v.video_id][0] if states.get(v.video_id, ("", ""))[1] == "ok"
         else ""}
        for v in dataset.videos
    ]
    counts = {"ok": 0, "failed": 0, "skip": 0, "removed": 0, "retried": 0,
              "still_failing": 0}
    if not items:
        return counts
    blocks = max(1, min(len(items) // cfg.ray.decode_batch_size, 200))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    decode_cpus = cfg.ray.decode_num_cpus
    ds = ds.map_batches(
        decode_batch, batch_size=cfg.ray.decode_batch_size, batch_format="numpy",
        fn_kwargs={"num_frames": cfg.sampling.num_frames, "size": size,
                   "threads": cfg.ray.decode_threads, "method": cfg.sampling.method,
                   "seed": cfg.sampling.seed,
                   "files_per_process": cfg.ray.decode_files_per_process,
                   "min_decoded_fraction": cfg.sampling.min_decoded_fraction,
                   "allow_stills": cfg.index.allow_stills},
        # resources via a function: Ray Data then never fuses decoding into the encoder
        # actor, so decode tasks run in parallel beside the actor pool instead of inside it
        ray_remote_args_fn=lambda: {"num_cpus": decode_cpus},
    )
    ds = ds.map_batches(
        FrameEncoderActor, batch_size=cfg.ray.decode_batch_size * 4, batch_format="numpy",
        **_actor_stage_args(cfg),
    )
    for batch in ds.iter_batches(batch_size=cfg.index.write_batch_rows, batch_format="numpy"):
        for key, value in _write_video_batch(index, batch, dataset.name).items():
            counts[key] += value
        for vid, status in zip(batch["video_id"], batch["status"], strict=True):
            if str(vid) in failed_before:
                counts["retried"] += 1
                counts["still_failing"] += status == "failed"
        if failures is not None:
            for i in np.flatnonzero(batch["status"] == "failed"):
                failures.setdefault(str(batch["error_reason"][i]), []).append(
                    (str(batch["video_id"][i]), str(batch["error"][i]))
                )
        if stop is not None and stop.is_set():
            break
    return counts


def remove_stale_captions(cfg: CrossTVRConfig, dataset: RetrievalDataset,
                          index: TokenIndex) -> int:
    """Delete the captions no longer in the dataset's annotations; returns how many."""
    return index.delete_captions_except(
        {c.caption_id for c in dataset.captions},
        of_videos=None if cfg.index.remove_missing else {v.video_id for v in dataset.videos},
    )


def index_captions(cfg: CrossTVRConfig, dataset: RetrievalDataset, index: TokenIndex,
                   stop: threading.Event | None = None) -> dict:
    """Encode every new or edited caption; once `stop` is set, return after the batch
    being written."""
    existing = index.caption_texts()
    todo = [c for c in dataset.captions if existing.get(c.caption_id) != c.text]
    counts = {"encoded": 0, "unchanged": len(dataset.captions) - len(todo), "removed": 0}
    if not todo:
        return counts
    items = [
        {"caption_id": c.caption_id, "video_id": c.video_id, "split": c.split,
         "text": c.text, "meta": json.dumps(c.meta, sort_keys=True)}
        for c in todo
    ]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // 256, 50)))
    ds = ds.map_batches(
        CaptionEncoderActor, batch_size=cfg.encoder.text_batch_size, batch_format="numpy",
        **_actor_stage_args(cfg),
    )
    for batch in ds.iter_batches(batch_size=CAPTION_WRITE_ROWS, batch_format="numpy"):
        counts["encoded"] += _write_caption_batch(index, batch)
        if stop is not None and stop.is_set():
            break
    return counts


def _index_videos_and_captions(cfg: CrossTVRConfig, dataset: RetrievalDataset,
                               index: TokenIndex, size: int,
                               failures: dict[str, list[tuple[str, str]]]) -> tuple[dict, dict]:
    """Deletions first, one at a time (both touch the captions table); then the videos and
    the captions are encoded at once, each into its own tables.

    Each pass alone leaves a CPU idle much of the time (decoding waits on ffmpeg, each
    actor spends seconds loading the encoder), so together they take about the longer one's
    time, not the sum. A pass that fails lets the other finish (what it committed stays),
    then its error is raised.
    """
    states = index.video_states()
    removed_videos = remove_missing_videos(cfg, dataset, index, states)
    removed_captions = remove_stale_captions(cfg, dataset, index)
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="index") as pool:  # waits for both
        videos = pool.submit(index_videos, cfg, dataset, index, size, failures, states, stop)
        captions = pool.submit(index_captions, cfg, dataset, index, stop)
        try:
            wait([videos, captions])
        except BaseException:
            # Ctrl-C (or a cancellation raised here) reaches this thread only: left alone,
            # the passes would write on to their end (the process waits for them at exit, and
            # a rerun in the same process would race them into duplicate rows). They stop
            # after the batch they are writing; what they committed stays for the rerun.
            stop.set()
            raise
    return ({**videos.result(), "removed": removed_videos},
            {**captions.result(), "removed": removed_captions})


def index_dataset(cfg: CrossTVRConfig, dataset: RetrievalDataset) -> IndexResult:
    """Bring the Lance tables of `dataset` up to date with its files and captions."""
    encoder = load_encoder(cfg)  # driver side: identity and shapes only
    shapes = token_shapes(cfg, encoder)
    index = TokenIndex(cfg.lance_uri, encoder.encoder_id, shapes, cfg.index.storage_options)
    read_versions = index.versions()
    failures: dict[str, list[tuple[str, str]]] = {}
    stopped = None
    try:
        video_counts, caption_counts = _index_videos_and_captions(
            cfg, dataset, index, encoder.image_size, failures)
        index.compact()
    except Exception as exc:
        stopped = index_stopped(exc, cfg, dataset.name)
        if stopped is None:
            raise
    if stopped is not None:
        # raised outside the except block, without the Ray error's traceback: its frames
        # hold the Ray Data executor and its actor handles, released here, not kept alive by
        # an exception a retry loop holds on to
        gc.collect()
        raise stopped
    counts = {f"videos_{k}": v for k, v in video_counts.items()}
    counts.update({f"captions_{k}": v for k, v in caption_counts.items()})
    log.info("indexed %s: %s", dataset.name, counts)
    ref = IndexRef(index.uri, encoder.encoder_id, asdict(shapes), index.versions(), counts,
                   read_versions, cfg.index.storage_options)
    return IndexResult(ref, failures)


class IndexStepError(RuntimeError):
    """The index step stopped on a fault of the machine (a full disk, a worker killed for
    memory); the message names it and what stays committed."""


def index_stopped(exc: Exception, cfg: CrossTVRConfig, name: str) -> IndexStepError | None:
    """A machine fault (tasks.runtime.failure_reason) that stopped the index step, as an
    IndexStepError that says what happened and what the tables hold now; None for others."""
    reason = failure_reason(exc)
    if reason is None:
        return None
    if "Ray worker" in reason:
        reason += (f"; the encoder actor is restarted ray.encode_max_restarts="
                   f"{cfg.ray.encode_max_restarts} times")
    try:
        index = TokenIndex.open_existing(cfg.lance_uri, cfg.index.storage_options)
        done = index.videos.count_rows("status = 'ok'")
        state = (f"the tables stay readable at their last commit, versions {index.versions()}, "
                 f"with {done} videos indexed")
    except Exception as read_exc:  # noqa: BLE001 - the report must not hide the first error
        state = f"the tables could not be read back ({read_exc})"
    return IndexStepError(
        f"indexing '{name}' into {cfg.lance_uri} stopped: {reason}; {state}. Fix the cause "
        f"and run it again: committed videos are skipped, the rest are indexed. "
        f"[{type(exc).__name__}: {str(exc)[:1200]}]")


def run_index(cfg: CrossTVRConfig, dataset_ref) -> IndexResult:
    """The flows' index step: a `DatasetRef` in, the index reference and failures out."""
    return index_dataset(cfg, dataset_ref.load())


def log_index_run(result: IndexResult) -> None:
    """Lineage and outcome of an index step on the active MLflow run."""
    import mlflow

    ref = result.ref
    mlflow.set_tags({"crosstvr.encoder_id": ref.encoder_id, "crosstvr.lance_uri": ref.uri})
    mlflow.log_dict({"uri": ref.uri, "read_versions": ref.read_versions,
                     "written_versions": ref.versions, "counts": ref.counts},
                    "lineage/index.json")
    if result.failures:
        mlflow.log_dict({reason: [{"video_id": v, "error": e} for v, e in items]
                         for reason, items in result.failures.items()}, "index/failures.json")


# retries (orchestration.index_retries, through tasks.runtime.retrying(kind="index")): a
# transient failure (a lost Ray node, a storage hiccup) re-runs the step, which skips
# everything already committed
index_task = task(run_index, name="index-corpus")
