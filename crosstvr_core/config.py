"""One typed configuration for every run.

A run is fully described by a `CrossTVRConfig`: loaded from a YAML or TOML file, then
overridden by dotted `key=value` strings (from the CLI or from flow parameters). The
resolved object is what every step reads and what MLflow records, so two runs with the
same resolved config did the same thing.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_HOME_ENV = "CROSSTVR_HOME"
# encoder.pretrained value: the embedded encoder pretrained by this project on generated
# stills (crosstvr_core.encoder_pretraining), then frozen
STILLS_PRETRAINED = "stills"


def default_home() -> str:
    """`$CROSSTVR_HOME`, else `.crosstvr/` in the current directory."""
    return os.environ.get(DEFAULT_HOME_ENV) or str(Path.cwd() / ".crosstvr")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Which corpus to index and evaluate."""

    # "generated" renders the embedded benchmark; any other value is an annotation format of
    # crosstvr_core.datasets (msrvtt, msvd, didemo, activitynet, vatex, lsmdc: the files as
    # the CLIP4Clip family distributes them; folder / manifest: any user corpus)
    kind: Literal[
        "generated", "folder", "manifest", "msrvtt", "msvd", "didemo", "activitynet", "vatex",
        "lsmdc",
    ] = "generated"
    # generated: where the benchmark is rendered (default: <home>/datasets/<name>);
    # otherwise: the directory holding the annotation files (folder: the videos' root).
    root: str | None = None
    # folder / manifest: the CSV or JSONL file (video or uri, caption, optional split);
    # a folder without one indexes every video file below root, captions-less.
    captions_file: str | None = None
    # known formats: annotation file overrides, role -> file name (see DATASET_FORMATS)
    annotations: dict[str, str] | None = None
    videos_dir: str | None = None  # default: <root>/videos when it exists, else <root>
    split: str | None = None  # None: every split whose files exist
    missing_videos: Literal["skip", "error", "keep"] = "skip"
    caption_mode: Literal["sentence", "paragraph"] | None = None  # None: the format's protocol
    caption_sampling: Literal["all", "one_per_epoch"] = "all"
    # which splits train (stage 1, re-ranker) and which one is evaluated (e.g. "val" for
    # VATEX, whose public test captions are withheld)
    train_split: str = "train"
    eval_split: str = "test"
    name: str = "generated-fine-grained"
    # generated benchmark sizes: a test group is a cube of 8 videos (3 one-factor swaps), so
    # 64 groups = 512 test videos (docs/benchmark-data.md).
    num_train_videos: int = Field(2000, ge=1)
    num_test_groups: int = Field(64, ge=1)
    captions_per_train_video: int = Field(3, ge=1)
    # generated: "disjoint" (default) keeps every test scene layout out of training, while
    # every component (colour, shape, region, direction, event order) still occurs there:
    # retrieval measures generalisation, not memory; "shared" re-shows up to
    # num_train_videos/2 test scenes in training, each once, with other noise, tint, jitter
    # and captions (never the test clip itself)
    train_scenes: Literal["shared", "disjoint"] = "disjoint"
    frame_size: int = Field(64, ge=16)
    rendered_frames: int = Field(16, ge=2)
    fps: int = Field(8, ge=1)
    seed: int = 0
    # generated: clips per Ray Data render task, all encoded by one ffmpeg process
    render_batch_size: int = Field(64, ge=1)


class EncoderConfig(_Section):
    """The frozen image-text encoder, loaded through open_clip."""

    # open_clip model name (e.g. ViT-B-32) or one of the configs shipped in
    # crosstvr_core/model_configs (the embedded default is a tiny ViT).
    name: str = "crosstvr-tiny-vit"
    # open_clip pretrained tag (e.g. "openai"), a local checkpoint file, "stills" (the
    # embedded encoder after image-text pretraining on generated stills, section `pretrain`;
    # made once per machine by the crosstvr-pretrain flow), or None for a random init with
    # `init_seed`. Local files are loaded through open_clip's checkpoint path either way.
    pretrained: str | None = STILLS_PRETRAINED
    init_seed: int = 0
    # the caption token features cached for stage 2: "last" (the text tower's last layer,
    # as CrossTVR reads real CLIP), "embedding" (its input token + position embeddings: word
    # identity, untouched by what pretraining taught the tower to ignore), or "auto":
    # "embedding" for the stills-pretrained encoder, whose last layer all but drops region
    # and direction words (docs/benchmarks.md), "last" for every other encoder
    text_tokens: Literal["auto", "last", "embedding"] = "auto"
    frame_batch_size: int = Field(256, ge=1)
    text_batch_size: int = Field(256, ge=1)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    torch_threads: int = Field(1, ge=1)


class PretrainConfig(_Section):
    """Image-text contrastive pretraining of the embedded encoder on generated stills
    (encoder.pretrained = "stills"); the result is frozen like any pretrained CLIP."""

    num_stills: int = Field(40_000, ge=2)
    num_eval_stills: int = Field(1024, ge=0)
    steps: int = Field(600, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(50, ge=0)
    seed: int = 0
    log_every: int = Field(50, ge=1)
    torch_threads: int = Field(2, ge=1)


class SamplingConfig(_Section):
    """How frames are taken from each video."""

    num_frames: int = Field(8, ge=1)
    # "uniform": F frames evenly over the clip (evaluation, the default); "segment": one
    # random frame per each of F equal segments (TSN-style augmentation), drawn from `seed`
    # and the video id, so a re-index with the same seed stores the same frames
    method: Literal["uniform", "segment"] = "uniform"
    seed: int = 0


class IndexConfig(_Section):
    """What the index step keeps and how re-indexing treats the corpus."""

    # keep only the M patch tokens per frame that the CLS token attends to most in the last
    # block (None: all patches); lets ViT-L / ViT-G corpora fit on disk
    keep_patches: int | None = Field(None, ge=1)
    # delete videos (and their tokens and captions) that are no longer in the corpus
    remove_missing: bool = True
    # rows per Lance commit on the driver: fewer, larger commits write faster; a kill loses
    # at most this many encoded videos
    write_batch_rows: int = Field(128, ge=1)
    # where the LanceDB databases live: None = <home>/lance; or an object-store root such as
    # "s3://bucket/crosstvr" (then `storage_options` carries credentials / endpoint / region)
    lance_root: str | None = None
    storage_options: dict[str, str] | None = None
    # scheduled re-indexing deployment (`crosstvr-index/reindex`): off until one is set
    schedule_cron: str | None = None
    schedule_interval_s: int | None = Field(None, ge=60)


class RayConfig(_Section):
    """Ray runtime and the resources of each Ray Data stage (same code on CPU and GPU)."""

    address: str | None = None  # None: a local runtime for this run; "auto" or ray://...
    num_cpus: int | None = 2  # for a local runtime only
    include_dashboard: bool = False
    decode_num_cpus: float = Field(0.5, gt=0)  # two decode tasks beside one encoder actor
    decode_batch_size: int = Field(16, ge=1)
    # files each decode task decodes at once (ffmpeg subprocesses; the task only waits)
    decode_threads: int = Field(2, ge=1)
    encode_num_cpus: float = Field(1.0, ge=0)
    encode_num_gpus: float = Field(0.0, ge=0)
    encode_pool_size: int = Field(1, ge=1)


class Stage1Config(_Section):
    """Candidate selection by cosine similarity."""

    # meanP: zero-shot mean pooling; seqTransf: trained temporal head over frozen frame
    # embeddings (CLIP4Clip); external: a similarity matrix from another retriever.
    method: Literal["meanP", "seqTransf", "external"] = "seqTransf"
    # seqTransf head and its training (cached tokens only): 1 layer + lr 5e-3 + 12 epochs
    # beat 2 layers + 30 epochs on the generated benchmark, in 60% of the time (the text
    # adapter over the caption tokens is most of the cost)
    num_layers: int = Field(1, ge=1)
    num_heads: int = Field(4, ge=1)
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(5e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    # a trainable adapter over the cached caption tokens (the text encoder stays frozen)
    text_adapter: bool = True
    # each batch video played backwards is one more negative column of text->video: the
    # head must read frame order (direction, order swaps have the same frames)
    reversed_negatives: bool = True
    # read the cached patch tokens too (per-patch MLP, max over patches, added to each
    # frame's CLS): a small object barely moves a random encoder's CLS embedding
    patch_branch: bool = True
    # False: the seqTransf head never trains on the re-ranker's validation videos
    # (train.val_fraction), so early stopping sees the lists of unseen videos, as at test
    # time; True: it trains on them too (more data, optimistic validation)
    train_on_validation_videos: bool = False
    # dual softmax (DSL) re-normalisation of the similarity at inference
    dual_softmax: bool = False
    dual_softmax_temperature: float = Field(0.01, gt=0)
    # external: .npy [num_captions, num_videos] + JSON lists of caption ids / video ids
    external_similarity: str | None = None
    external_caption_ids: str | None = None
    external_video_ids: str | None = None


class RerankerConfig(_Section):
    """The CrossTVR decoupled cross-attention re-ranker."""

    # sized for a 2-core CPU and the embedded 128-wide encoder: a listwise step of 16
    # captions (about 500 pairs) takes ~0.4 s; raise both for ViT-B and a GPU
    hidden_size: int = Field(64, ge=8)
    num_heads: int = Field(4, ge=1)
    num_layers: int = Field(1, ge=1)  # L blocks per attention level
    num_queries: int = Field(4, ge=1)  # N_Q learnable query tokens
    dropout: float = Field(0.0, ge=0, lt=1)
    # the ablation switch: decoupled = frame-level then video-level cross attention (paper);
    # spatial_only = frame level, mean over frames; temporal_only = video level over the
    # frame CLS tokens; joint = one level over all frames' tokens at once
    attention: Literal["decoupled", "spatial_only", "temporal_only", "joint"] = "decoupled"
    # the frame and video levels use the same blocks (paper's best: sharing, +0.2 R@1)
    share_parameters: bool = True
    # who cross-attends to visual tokens: only the N_Q queries (text reaches them through
    # self-attention; trained where the paper's form stalled in a prototype), or the whole
    # [queries; text] sequence as in the paper
    cross_attention_from: Literal["queries", "queries_and_text"] = "queries"
    # M patch tokens kept per frame by the TS2-Net selector (paper: 4); "all" keeps every one.
    # The embedded encoder has only 16 patches per frame, all kept; set 4 for ViT-B/32-sized
    # grids (49 patches)
    num_selected_patches: Annotated[int, Field(ge=1)] | Literal["all"] = "all"
    # self-attention blocks over the caption's projected tokens (+ positions) before the
    # queries read them: stage 2's own trainable text side (0: projected frozen tokens only)
    text_layers: int = Field(1, ge=0)
    # self-attention blocks over per-frame summaries (frame CLS + temporal position + frame
    # difference) before both attention levels: every frame token then knows its context
    # in time, so a clip and its reversal differ from the first step (0: off)
    temporal_layers: int = Field(1, ge=0)
    # init std of the temporal position embeddings; the tokens they are added to are
    # LayerNormed (per-dimension std ~1), so 0.02 would leave time nearly invisible
    temporal_pos_std: float = Field(0.5, gt=0)
    # add a projection of (frame CLS - previous frame CLS) to each frame's summary
    frame_differences: bool = True
    # add a linear map of the frame's whole patch grid to its summary: where things are in
    # each frame, which a CLS embedding barely says, so the temporal blocks can see motion
    grid_summary: bool = True
    # K spatial soft-argmax keypoints per frame (a learned saliency map over the patch grid,
    # its expected (x, y) and peak), added to each frame's summary: a few numbers per frame
    # that say where the salient things are, so motion is a short trajectory (0: off)
    keypoints: int = Field(8, ge=0)
    # add a multiplicative text x video term (cosine of pooled text and pooled temporal
    # states, learned scale) to the query-mean head's logit
    match_term: bool = True
    # add a temporal grounding term: each caption token finds the frames that show what it
    # names (its best-matching patch token in each frame, softmax over time), and the
    # caption says when each token should happen (a learned early/late score per token); the
    # logit rewards agreement, so "A, then B" and its reversal read opposite signs. On the
    # generated benchmark it took order twins from chance to 67 / 80 (t2v / v2t) and
    # direction from 81 to 98 (docs/benchmarks.md)
    grounding_term: bool = True
    # perturbed top-M during training: noisy draws and noise scale (TS2-Net: sigma 0.05)
    selection_samples: int = Field(100, ge=1)
    selection_sigma: float = Field(0.05, gt=0)


class TrainConfig(_Section):
    """Re-ranker training on cached tokens."""

    # "listwise": softmax cross-entropy over real stage-1 top-K lists, text->video and
    # video->text, the caption's own clip played backwards always in its list; "bce": the
    # paper's binary VTM loss over (positive, hard negative video, hard negative caption)
    loss: Literal["listwise", "bce"] = "listwise"
    # K of the training lists (the positive is put in when stage 1 missed it)
    list_size: int = Field(15, ge=2)
    # listwise: captions (and as many videos) per step
    list_batch_size: int = Field(16, ge=1)
    # listwise: an epoch visits every caption ("all") or one random caption per video
    # ("one_per_video": as many steps as videos; the other captions come in later epochs)
    captions_per_epoch: Literal["all", "one_per_video"] = "one_per_video"
    # cross-fitting: the training lists come from stage-1 models that each never saw the
    # fold of videos they list (k folds); 0 = from the stage 1 trained on all of them
    stage1_folds: int = Field(2, ge=0)

    # 6: validation R@1 still rises at 3 (92.8 -> 96.4 at 6 on the generated benchmark)
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    hard_negatives: bool = True
    # extra random negative videos per caption, beside the hard video and the hard caption
    random_negatives: int = Field(2, ge=0)
    # one more negative per caption: its own video played backwards (same frames, reversed
    # order), which only temporal modelling can reject
    reversed_negatives: bool = True
    # curriculum: the share of hard (vs random) negatives grows 0 -> 1 over this fraction of
    # training; 0 = hard from the first step (BLIP), which stalls a model trained from scratch
    hard_negative_warmup: float = Field(1.0, ge=0, le=1)
    # softmax temperature over stage-1 similarities when sampling hard negatives
    hard_negative_temperature: float = Field(0.05, gt=0)
    # where hard negatives come from: the full stage-1 similarity, or only the stored
    # stage-1 top-K per query (Lance table stage1_candidates)
    negative_source: Literal["similarity", "stage1_top_k"] = "similarity"
    # mixed precision of the training and scoring forward on CUDA (CPU always runs fp32);
    # fp16 adds a GradScaler
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    # share of train videos (with their captions) held out to validate each epoch on
    # two-stage R@1; 0 = no validation, no early stopping
    val_fraction: float = Field(0.1, ge=0, lt=1)
    # epochs without a better validation R@1 before stopping; the best weights are kept
    early_stopping_patience: int = Field(3, ge=1)
    seed: int = 0
    torch_threads: int = Field(2, ge=1)


class EvalConfig(_Section):
    """Two-stage evaluation."""

    top_k: int = Field(15, ge=1)
    # stage1 + w * stage2 over the top K; None: w picked per direction on the re-ranker's
    # validation split (two_stage.FUSION_WEIGHT_GRID), stored with the model
    fusion_weight: float | None = None
    # stage-2 score added to the stage-1 cosine: the raw logit (a listwise model's scores
    # are relative, so squashing them adds nothing) or the VTM probability
    fusion_score: Literal["prob", "logit"] = "logit"
    batch_size: int = Field(256, ge=1)


class SearchConfig(_Section):
    """Text queries against an index (`crosstvr search`, the crosstvr-search/batch
    deployment): stage 1 over every indexed video, the re-ranker over its top eval.top_k."""

    k: int = Field(10, ge=1)  # results shown per query
    # registry alias (champion | candidate, resolved for the index's dataset + encoder) or
    # the MLflow run id of a finished benchmark run
    model: str = "champion"
    rerank: bool = True
    # exact cosine search below this many videos; past it the stage-1 embeddings get a
    # LanceDB ANN index, whose recall against exact search is measured when it is built
    exact_below: int = Field(50_000, ge=1)


class OrchestrationConfig(_Section):
    """How the flows' Prefect tasks retry transient failures (a lost Ray node, a storage or
    tracking-server hiccup). Retried steps redo little: the index skips what it committed,
    training resumes from its last checkpoint."""

    task_retries: int = Field(1, ge=0)
    index_retries: int = Field(2, ge=0)
    retry_delay_s: float = Field(5.0, ge=0)


class TrackingConfig(_Section):
    """MLflow tracking."""

    # None: $MLFLOW_TRACKING_URI if set, else a SQLite store under <home>/mlflow.
    tracking_uri: str | None = None
    experiment: str = "crosstvr"
    log_model: bool = True


class CrossTVRConfig(_Section):
    """Everything a run needs to know."""

    home: str = Field(default_factory=default_home)
    data: DataConfig = DataConfig()
    encoder: EncoderConfig = EncoderConfig()
    pretrain: PretrainConfig = PretrainConfig()
    sampling: SamplingConfig = SamplingConfig()
    index: IndexConfig = IndexConfig()
    ray: RayConfig = RayConfig()
    stage1: Stage1Config = Stage1Config()
    reranker: RerankerConfig = RerankerConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    search: SearchConfig = SearchConfig()
    tracking: TrackingConfig = TrackingConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve()

    @property
    def lance_uri(self) -> str:
        """One LanceDB database per dataset: tables of two corpora never mix."""
        if self.index.lance_root:  # a string join: Path would collapse "s3://" into "s3:/"
            return f"{self.index.lance_root.rstrip('/')}/{self.data.name}.lancedb"
        return str(self.home_path / "lance" / f"{self.data.name}.lancedb")

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, the form MLflow params take."""
        return flatten(self.model_dump())


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message names it."""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _read_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}': not found")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file '{path}': expected .yaml, .yml or .toml")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file '{path}': cannot parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}': top level must be a mapping")
    return data


def _apply_override(tree: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override '{override}': expected key=value (e.g. train.epochs=3)")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override '{override}': empty key segment")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{override}': '{part}' is not a section")
        node = child
    # YAML scalars: 3 -> int, 1e-3 -> float, true -> bool, null -> None, text -> str
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node[parts[-1]] = value


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> CrossTVRConfig:
    """Defaults <- file <- overrides, validated; errors name the key that is wrong."""
    tree: dict[str, Any] = _read_file(path) if path else {}
    for override in overrides:
        _apply_override(tree, override)
    try:
        return CrossTVRConfig.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid config: {problems}") from exc
