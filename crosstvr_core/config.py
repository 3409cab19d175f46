"""One typed configuration for every run.

A run is fully described by a `CrossTVRConfig`: loaded from a YAML or TOML file, then
overridden by dotted `key=value` strings (from the CLI or from flow parameters). The
resolved object is what every step reads and what MLflow records, so two runs with the
same resolved config did the same thing.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

DEFAULT_HOME_ENV = "CROSSTVR_HOME"
# encoder.pretrained value: the embedded encoder pretrained by this project on generated
# stills (crosstvr_core.training.encoder_pretraining), then frozen
STILLS_PRETRAINED = "stills"


def default_home() -> str:
    """`$CROSSTVR_HOME`, else `.crosstvr/` in the current directory."""
    return os.environ.get(DEFAULT_HOME_ENV) or str(Path.cwd() / ".crosstvr")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Which corpus to index and evaluate."""

    kind: Literal[
        "generated", "folder", "manifest", "msrvtt", "msvd", "didemo", "activitynet", "vatex",
        "lsmdc",
    ] = Field(
        "generated",
        description='"generated" renders the embedded benchmark; any other value is an '
        "annotation format of crosstvr_core.data.datasets (msrvtt, msvd, didemo, activitynet, vatex, "
        "lsmdc: the files as the CLIP4Clip family distributes them; folder / manifest: any "
        "user corpus).",
    )
    root: str | None = Field(
        None,
        description="generated: where the benchmark is rendered (default: "
        "`<home>/datasets/<name>`); otherwise: the directory holding the annotation files "
        "(folder: the videos' root).",
    )
    captions_file: str | None = Field(
        None,
        description="folder / manifest: the CSV or JSONL file (video or uri, caption, optional "
        "split); a folder without one indexes every video file below root, captions-less.",
    )
    annotations: dict[str, str] | None = Field(
        None,
        description="Known formats: annotation file overrides, role -> file name (roles: "
        "annotation_formats.ANNOTATION_FORMATS[kind].files).",
    )
    videos_dir: str | None = Field(
        None,
        description="Where the videos are; default: `<root>/videos` when it exists, else "
        "`<root>`.",
    )
    split: str | None = Field(
        None, description="Load only this split; None: every split whose files exist."
    )
    missing_videos: Literal["skip", "error", "keep"] = Field(
        "skip",
        description='Videos whose file is not found: "skip" (reported on the dataset), "error", '
        'or "keep" (listed with the expected path; decoding then records them as failed).',
    )
    caption_mode: Literal["sentence", "paragraph"] | None = Field(
        None,
        description='"sentence", or "paragraph" (a video\'s sentences joined into one caption: '
        "the DiDeMo and ActivityNet protocol); None: the format's protocol.",
    )
    train_split: str = Field(
        "train", description="The split that trains stage 1 and the re-ranker."
    )
    eval_split: str = Field(
        "test",
        description='The split that is evaluated (e.g. "val" for VATEX, whose public test '
        "captions are withheld).",
    )
    val_split: str | None = Field(
        "val",
        description="The split that validates the re-ranker each epoch (early stopping, the "
        "fusion weights): a split that looks like the evaluated one, never trained on. When "
        "the index has no captioned videos in it (MSR-VTT has no val split), or it is the "
        "train or eval split, a seeded train.val_fraction of the train videos is held out "
        "instead; null: always hold out.",
    )
    name: str = Field(
        "generated-fine-grained",
        description="The dataset's name: it names its LanceDB database (`<name>.lancedb`), its "
        "registered models and the dataset tag of its MLflow runs.",
    )
    num_train_videos: int = Field(
        2000, ge=1, description="generated: training videos rendered."
    )
    num_test_groups: int = Field(
        64,
        ge=1,
        description="generated: test groups; a test group is a cube of 8 videos (3 one-factor "
        "swaps), so 64 groups = 512 test videos (docs/benchmark-data.md).",
    )
    num_val_groups: int = Field(
        25,
        ge=0,
        description="generated: validation groups (split val), cubes like the test's and "
        "sharing no scene with it or with training, so selection on validation sees the "
        "one-factor near-duplicates the test ranks; 25 groups = 200 videos; 0: no val split.",
    )
    captions_per_train_video: int = Field(
        3, ge=1, description="generated: captions written for each training video."
    )
    train_scenes: Literal["shared", "disjoint"] = Field(
        "disjoint",
        description='generated: "disjoint" (default) keeps every test scene layout out of '
        "training, while every component (colour, shape, region, direction, event order) still "
        'occurs there: retrieval measures generalisation, not memory; "shared" re-shows up to '
        "num_train_videos/2 test scenes in training, each once, with other noise, tint, jitter "
        "and captions (never the test clip itself).",
    )
    frame_size: int = Field(
        64, ge=16, description="generated: width and height of the rendered frames, in pixels."
    )
    rendered_frames: int = Field(
        16, ge=2, description="generated: frames rendered per clip."
    )
    fps: int = Field(8, ge=1, description="generated: frame rate of the rendered clips.")
    seed: int = Field(
        0, description="generated: seed of the rendered scenes, clips and captions."
    )
    render_batch_size: int = Field(
        64,
        ge=1,
        description="generated: clips per Ray Data render task, all encoded by one ffmpeg "
        "process.",
    )


class EncoderConfig(_Section):
    """The frozen image-text encoder, loaded through open_clip."""

    name: str = Field(
        "crosstvr-tiny-vit",
        description="open_clip model name (e.g. ViT-B-32) or one of the configs shipped in "
        "crosstvr_core/models/model_configs (the embedded default is a tiny ViT).",
    )
    pretrained: str | None = Field(
        STILLS_PRETRAINED,
        description='open_clip pretrained tag (e.g. "openai"), a local checkpoint file, '
        '"stills" (the embedded encoder after image-text pretraining on generated stills, '
        "section `pretrain`; made once per machine by the crosstvr-pretrain flow), or None for "
        "a random init with `init_seed`. Local files are loaded through open_clip's checkpoint "
        "path either way.",
    )
    init_seed: int = Field(
        0, description="Seed of the random init (pretrained: None, and the start of pretraining)."
    )
    text_tokens: Literal["auto", "last", "embedding"] = Field(
        "auto",
        description='The caption token features cached for stage 2: "last" (the text tower\'s '
        'last layer, as CrossTVR reads real CLIP), "embedding" (its input token + position '
        "embeddings: word identity, untouched by what pretraining taught the tower to ignore), "
        'or "auto": "embedding" for the stills-pretrained encoder, whose last layer all but '
        'drops region and direction words (docs/benchmarks.md), "last" for every other encoder.',
    )
    frame_batch_size: int = Field(
        256, ge=1, description="Frames per encoder forward when indexing."
    )
    text_batch_size: int = Field(
        256, ge=1, description="Captions per encoder forward when indexing."
    )
    precision: Literal["fp32", "fp16", "bf16"] = Field(
        "fp32",
        description="Autocast precision of the encoder forward on CUDA (CPU always runs fp32).",
    )
    torch_threads: int = Field(
        1, ge=1, description="torch threads of each encoder actor."
    )


class PretrainConfig(_Section):
    """Image-text contrastive pretraining of the embedded encoder on generated stills
    (encoder.pretrained = "stills"); the result is frozen like any pretrained CLIP."""

    num_stills: int = Field(40_000, ge=2, description="Captioned training stills generated.")
    num_eval_stills: int = Field(
        1024,
        ge=0,
        description="Held-out stills, retrieved before and after pretraining (0: none).",
    )
    moved_pairs: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of scenes whose second still is the same frame with one object "
        "moved to a free region (a mover to another band), instead of another frame of the "
        "scene. Both stills share a batch, so the contrastive loss must read where things "
        "are; colours alone tell random captions apart, and an encoder trained on those "
        "alone cannot tell a caption's region from another.",
    )
    pair_loss: float = Field(
        0.0,
        ge=0,
        description="Weight of a contrastive loss within each scene's two stills, where they "
        "show different things (added to the batch's ClipLoss).",
    )
    steps: int = Field(600, ge=1, description="Optimizer steps.")
    batch_size: int = Field(128, ge=2, description="Still-caption pairs per contrastive step.")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate of the cosine schedule.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(50, ge=0, description="Linear learning-rate warmup steps.")
    seed: int = Field(0, description="Seed of the stills and of training.")
    log_every: int = Field(50, ge=1, description="Log the loss every this many steps.")
    torch_threads: int = Field(2, ge=1, description="torch threads while pretraining.")


class SamplingConfig(_Section):
    """How frames are taken from each video."""

    num_frames: int = Field(8, ge=1, description="F: frames kept per video.")
    method: Literal["uniform", "segment"] = Field(
        "uniform",
        description='"uniform": F frames evenly over the clip (evaluation, the default); '
        '"segment": one random frame per each of F equal segments (TSN-style augmentation), '
        "drawn from `seed` and the video id, so a re-index with the same seed stores the same "
        "frames.",
    )
    seed: int = Field(0, description='Seed of the "segment" draws.')
    min_decoded_fraction: float = Field(
        0.9,
        gt=0,
        le=1,
        description="A video fails as `truncated` when fewer frames decode than this fraction of "
        "the frame count its container lists. A smaller shortfall (edit lists, B-frames, muxer "
        "rounding) is sampled from the frames that decode and noted in the `videos` row's "
        "`decode_warning`. 1 = every listed frame must decode.",
    )


class IndexConfig(_Section):
    """What the index step keeps and how re-indexing treats the corpus."""

    keep_patches: int | None = Field(
        None,
        ge=1,
        description="Keep only the M patch tokens per frame that the CLS token attends to most "
        "in the last block (None: all patches); lets ViT-L / ViT-G corpora fit on disk.",
    )
    token_memory_gb: float = Field(
        8.0,
        gt=0,
        description="Memory budget for a split's patch tokens: a split up to this size is "
        "loaded into memory; a larger one keeps its patches in the Lance table and every "
        "batch (stage 1, training, scoring) reads its rows from there.",
    )
    remove_missing: bool = Field(
        True,
        description="Delete videos (and their tokens and captions) that are no longer in the "
        "corpus.",
    )
    allow_stills: bool = Field(
        False,
        description="Index a still image (a PNG or JPEG, a one-frame GIF or WebP, also when named "
        "like a video) as a one-frame clip; false: it fails with reason `still_image`.",
    )
    write_batch_rows: int = Field(
        128,
        ge=1,
        description="Rows per Lance commit on the driver: fewer, larger commits write faster; "
        "a kill loses at most this many encoded videos.",
    )
    lance_root: str | None = Field(
        None,
        description="Where the LanceDB databases live: None = `<home>/lance`; or an "
        'object-store root such as "s3://bucket/crosstvr" (then `storage_options` carries '
        "credentials / endpoint / region).",
    )
    storage_options: dict[str, str] | None = Field(
        None,
        description="Object-store options for lance_root (credentials, endpoint, region).",
    )
    schedule_cron: str | None = Field(
        None,
        description="Cron schedule of the re-indexing deployment (`crosstvr-index/reindex`); "
        "off until it or schedule_interval_s is set.",
    )
    schedule_interval_s: int | None = Field(
        None,
        ge=60,
        description="Interval schedule of the re-indexing deployment, in seconds; off until it "
        "or schedule_cron is set.",
    )
    cleanup_versions: bool = Field(
        True,
        description="After each re-index (`crosstvr-index/reindex`), remove old Lance table "
        "versions that no run or registered model in the tracking store names (they keep "
        "theirs, as Lance tags); `crosstvr cleanup` does the same by hand.",
    )
    cleanup_min_age_s: float = Field(
        3600.0,
        ge=0,
        description="Versions younger than this are never cleaned: a run still writing, or one "
        "that has read a version but not yet recorded it, keeps what it reads.",
    )


class RayConfig(_Section):
    """Ray runtime and the resources of each Ray Data stage (same code on CPU and GPU)."""

    address: str | None = Field(
        None, description='None: a local runtime for this run; "auto" or ray://...'
    )
    num_cpus: int | None = Field(2, description="CPUs of a local runtime (only).")
    include_dashboard: bool = Field(False, description="Start the Ray dashboard.")
    decode_num_cpus: float = Field(
        0.25,
        gt=0,
        description="CPUs each decode task asks Ray for. A task mostly waits on its ffmpeg "
        "processes, and Ray Data lets an operator use only its share of the CPUs: 0.25 runs "
        "two decode tasks at once on 2 CPUs, where 0.5 ran one and left a CPU idle a third "
        "of the time (docs/benchmarks.md, indexing).",
    )
    decode_batch_size: int = Field(16, ge=1, description="Videos per decode batch.")
    decode_threads: int = Field(
        2,
        ge=1,
        description="Groups of files each decode task decodes at once (ffmpeg subprocesses; the "
        "task only waits).",
    )
    decode_files_per_process: int = Field(
        16,
        ge=1,
        description="Files one ffmpeg process probes, and one decodes, together (one input and "
        "one output each): process start-up is most of a small clip's cost. A file the batch "
        "cannot vouch for, or a batch that fails, is decoded on its own, so every file keeps "
        "its own failure reason; 1 = one ffprobe and one ffmpeg per file.",
    )
    encode_num_cpus: float = Field(
        0.5,
        ge=0,
        description="CPUs each encoder actor asks Ray for (its torch threads are "
        "encoder.torch_threads). The video and the caption actors run at once, and each "
        "spends much of its time waiting for decoded batches or loading the encoder: at 1.0 "
        "the two held both CPUs of a 2-core machine and decoding stalled.",
    )
    encode_num_gpus: float = Field(0.0, ge=0, description="GPUs per encoder actor.")
    encode_pool_size: int = Field(1, ge=1, description="Encoder actors in the pool.")
    encode_max_restarts: int = Field(
        3,
        ge=-1,
        description="Restarts of an encoder actor whose process died (e.g. killed for memory), "
        "each retrying the batch it was encoding, before the index step fails naming it; "
        "committed videos stay, a rerun does the rest. -1: for ever (Ray Data's default).",
    )


class Stage1Config(_Section):
    """Candidate selection by cosine similarity."""

    method: Literal["meanP", "seqTransf", "external"] = Field(
        "seqTransf",
        description="meanP: zero-shot mean pooling; seqTransf: trained temporal head over "
        "frozen frame embeddings (CLIP4Clip); external: a similarity matrix from another "
        "retriever.",
    )
    num_layers: int = Field(
        1,
        ge=1,
        description="seqTransf: transformer layers of the head (trained on cached tokens only); "
        "1 layer + lr 5e-3 + 12 epochs beat 2 layers + 30 epochs on the generated benchmark, in "
        "60% of the time (the text adapter over the caption tokens is most of the cost).",
    )
    num_heads: int = Field(4, ge=1, description="seqTransf: attention heads of the head.")
    epochs: int = Field(12, ge=1, description="seqTransf: training epochs.")
    batch_size: int = Field(128, ge=2, description="seqTransf: captions per contrastive step.")
    lr: float = Field(5e-3, gt=0, description="seqTransf: peak learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="seqTransf: weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="seqTransf: gradient-norm clipping.")
    warmup_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="seqTransf: share of training spent warming up the learning rate.",
    )
    seed: int = Field(0, description="seqTransf: training seed.")
    text_adapter: bool = Field(
        True,
        description="A trainable adapter over the cached caption tokens (the text encoder "
        "stays frozen).",
    )
    reversed_negatives: bool = Field(
        True,
        description="Each batch video played backwards is one more negative column of "
        "text->video: the head must read frame order (direction, order swaps have the same "
        "frames).",
    )
    frame_positions: bool = Field(
        True,
        description="Learned frame positions in the temporal transformer (CLIP4Clip). False: "
        "the head is a set function of its frames, so a clip and any reordering of it score "
        "the same (needs reversed_negatives off), so its share of the fused score adds no noise "
        "to order and direction twins. On the generated benchmark (one seed) two-stage order "
        "twins then equal the re-ranker's own (t2v 75.0), but two-stage R@1 fell to 69.1 / 72.5 "
        "from 73.6 / 76.2 (validation 85.25 against 88.75): the re-ranker trained on its lists "
        "read less.",
    )
    patch_branch: bool = Field(
        True,
        description="Read the cached patch tokens too (per-patch MLP, max over patches, added "
        "to each frame's CLS): a small object barely moves a random encoder's CLS embedding.",
    )
    train_on_validation_videos: bool = Field(
        False,
        description="False: the seqTransf head never trains on the re-ranker's validation "
        "videos (train.val_fraction), so early stopping sees the lists of unseen videos, as at "
        "test time; True: it trains on them too (more data, optimistic validation).",
    )
    dual_softmax: bool = Field(
        False,
        description="Dual softmax (DSL) re-normalisation of the similarity at inference.",
    )
    dual_softmax_temperature: float = Field(
        0.01, gt=0, description="Temperature of the dual softmax."
    )
    external_similarity: str | None = Field(
        None, description="external: .npy file, [num_captions, num_videos] similarities."
    )
    external_caption_ids: str | None = Field(
        None, description="external: JSON list of the caption ids of its rows."
    )
    external_video_ids: str | None = Field(
        None, description="external: JSON list of the video ids of its columns."
    )


class RerankerConfig(_Section):
    """The CrossTVR decoupled cross-attention re-ranker."""

    hidden_size: int = Field(
        64,
        ge=8,
        description="Width of the re-ranker. The defaults are sized for a 2-core CPU and the "
        "embedded 128-wide encoder: a listwise step of 16 captions (about 500 pairs) takes "
        "~0.4 s; raise hidden_size and num_heads for ViT-B and a GPU.",
    )
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    num_layers: int = Field(1, ge=1, description="L blocks per attention level.")
    num_queries: int = Field(4, ge=1, description="N_Q learnable query tokens.")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout in the attention and feed-forward blocks. "
        "On the generated benchmark 0.1 left order-twin accuracy where it was and cost 4 to 5 "
        "points of the re-ranker's own top-1."
    )
    ensemble_size: int = Field(
        2, ge=1, description="Re-rankers trained one after another from seeds train.seed, "
        "train.seed + 1, ... on the same training lists, each early-stopped on validation as a "
        "single one would be; their logits are averaged and the ensemble's fusion weights are "
        "fit on validation again. Training and scoring time grow with it. On the generated "
        "benchmark two members were 2.2 and 3.5 points of text-to-video R@1 above their "
        "members' mean and met every twin bar where single seeds missed some; 1 (a single "
        "re-ranker) saves about a quarter of a fresh run (docs/benchmarks.md)."
    )
    attention: Literal["decoupled", "spatial_only", "temporal_only", "joint"] = Field(
        "decoupled",
        description="The ablation switch: decoupled = frame-level then video-level cross "
        "attention (paper); spatial_only = frame level, mean over frames; temporal_only = "
        "video level over the frame CLS tokens; joint = one level over all frames' tokens at "
        "once.",
    )
    share_parameters: bool = Field(
        True,
        description="The frame and video levels use the same blocks (the paper's best: "
        "sharing, +0.2 R@1). On the generated benchmark over four seeds, separate blocks were "
        "level (two-stage R@1 75.2 / 78.1 against 74.8 / 77.2, lower on one seed of four "
        "text-to-video, two video-to-text).",
    )
    cross_attention_from: Literal["queries", "queries_and_text"] = Field(
        "queries",
        description="Who cross-attends to visual tokens: only the N_Q queries (text reaches "
        "them through self-attention; trained where the paper's form stalled in a prototype), "
        "or the whole [queries; text] sequence as in the paper.",
    )
    num_selected_patches: Annotated[int, Field(ge=1)] | Literal["all"] = Field(
        "all",
        description='M patch tokens kept per frame by the TS2-Net selector (paper: 4); "all" '
        "keeps every one. The embedded encoder has only 16 patches per frame, all kept; set 4 "
        "for ViT-B/32-sized grids (49 patches).",
    )
    text_layers: int = Field(
        1,
        ge=0,
        description="Self-attention blocks over the caption's projected tokens (+ positions) "
        "before the queries read them: stage 2's own trainable text side (0: projected frozen "
        "tokens only).",
    )
    grounding_heads: int = Field(
        1,
        ge=1,
        description="Independent grounding heads (hidden_size must divide by it): each has its "
        "own token-to-frame matching, its own per-token importance and expected time, so "
        "one head can follow the objects that appear or leave while another follows the "
        "colours a changing object goes through.",
    )
    grounding_mention_order: bool = Field(
        False,
        description="Let the grounding term's expected time also read where in the caption a "
        "token stands (a learned weight, from 0, on its relative position): captions tend to "
        "name things in the order they happen ('A, then B', 'from red to blue').",
    )
    grounding_cursor: bool = Field(
        False,
        description="Let the grounding term's expected time also follow a time cursor: each "
        "token moves it by a learned amount (from 0) for the tokens after it, so words such "
        "as 'then', 'to' or 'after' can shift everything named later ('A, then B', 'from red "
        "to blue'). Off by default: on the generated benchmark it was level with the default "
        "over three seeds (t2v R@1 68.2 vs 68.8, order twins t2v 62.9 vs 66.3).",
    )
    text_recurrent: bool = Field(
        False,
        description="Run a bidirectional GRU over the caption's token states after the text "
        "self-attention (residual): each word's state then carries what precedes and follows "
        "it in order ('from red to blue', 'A, then B'), which the grounding term needs to say "
        "when each named thing should be seen.",
    )
    temporal_layers: int = Field(
        1,
        ge=0,
        description="Self-attention blocks over per-frame summaries (frame CLS + temporal "
        "position + frame difference) before both attention levels: every frame token then "
        "knows its context in time, so a clip and its reversal differ from the first step "
        "(0: off).",
    )
    temporal_pos_std: float = Field(
        0.5,
        gt=0,
        description="Init std of the temporal position embeddings; the tokens they are added "
        "to are LayerNormed (per-dimension std ~1), so 0.02 would leave time nearly invisible.",
    )
    frame_differences: bool = Field(
        True,
        description="Add a projection of (frame CLS - previous frame CLS) to each frame's "
        "summary.",
    )
    grid_summary: bool = Field(
        True,
        description="Add a linear map of the frame's whole patch grid to its summary: where "
        "things are in each frame, which a CLS embedding barely says, so the temporal blocks "
        "can see motion.",
    )
    keypoints: int = Field(
        16,
        ge=0,
        description="K spatial soft-argmax keypoints per frame (a learned saliency map over "
        "the patch grid, its expected (x, y) and peak), added to each frame's summary: a few "
        "numbers per frame that say where the salient things are, so motion is a short "
        "trajectory (0: off).",
    )
    match_term: bool = Field(
        True,
        description="Add a multiplicative text x video term (cosine of pooled text and pooled "
        "temporal states, learned scale) to the query-mean head's logit.",
    )
    match_video: Literal["temporal", "frames"] = Field(
        "temporal",
        description="What the match term pools on the video side: the frame states after "
        "the temporal blocks ('temporal'), or each frame's own summary before them (CLS, "
        "patch-grid map, keypoints) averaged over the clip, plus where its keypoints move "
        "(their slope over time) ('frames'): then the order of the frames reaches the term "
        "only through motion, and when things happen is left to the timing terms. On the "
        "generated benchmark with 8 keypoints, over four seeds 'frames' held colour twins at or above stage "
        "1's on every seed (t2v 98.5 against 98.1) and lost direction twins (93.3 against "
        "96.7) at the same R@1 (71.5 / 73.9 against 72.2 / 73.9), docs/benchmarks.md.",
    )
    caption_summary: bool = Field(
        False,
        description="Add the caption's frozen sentence embedding (the text tower's EOT output, "
        "what stage 1 ranks with) to every caption token through a zero-initialised "
        "projection, so stage 2's text side starts from the words and can learn to use what "
        "the tower's summary already knows (colour, shape). Off: on the generated benchmark "
        "with 8 keypoints over four seeds it gains order twins (t2v 75.9 against 72.9) and "
        "loses direction twins (91.9 against 96.7), with two-stage R@1 unchanged; with 16 "
        "keypoints over three seeds it leaves order twins where they are (t2v 73.3 against "
        "74.1) and costs text-to-video R@1 (73.2 against 75.5), see docs/benchmarks.md.",
    )
    word_features: bool = Field(
        False,
        description="Add each caption token's own frozen embedding (the token alone through "
        "the text tower, in the image space: what the word-timing term reads) to that token "
        "through a zero-initialised projection, so stage 2's text side can read a word the "
        "way the frozen towers align it with frames (colour, shape) instead of learning that "
        "from its own training captions. Off: on the generated benchmark (two seeds) it left "
        "colour twins below stage 1's and two-stage R@1 lower (71.3 against 72.25 t2v), "
        "docs/benchmarks.md.",
    )
    frozen_similarity_term: bool = Field(
        False,
        description="Add the frozen encoder's own text-video cosine (the caption's EOT "
        "embedding against the mean frame embedding, i.e. meanP) times a learned scale to the "
        "logit, so stage 2 starts from what the frozen encoder already reads. Off: on the "
        "generated benchmark it starved every other term (two-stage R@1 28 / 32 instead of "
        "68 / 67; position and direction twins at chance), see docs/benchmarks.md.",
    )
    grounding_term: bool = Field(
        True,
        description="Add a temporal grounding term: each caption token finds the frames that "
        "show what it names (its best-matching patch token in each frame, softmax over time), "
        "and the caption says when each token should happen (a learned early/late score per "
        'token); the logit rewards agreement, so "A, then B" and its reversal read opposite '
        "signs. On the generated benchmark it took order twins from chance to 67 / 80 "
        "(t2v / v2t) and direction from 81 to 98 (docs/benchmarks.md).",
    )
    word_timing_term: bool = Field(
        True,
        description="Add a word-timing term: each caption token's own frozen embedding (the "
        "token alone through the frozen text tower) is compared with every frame's frozen "
        "embedding, and a softmax over time says when the clip shows it; the caption says "
        "when each token should happen (a learned early/late score per token); the logit "
        "rewards agreement. The observed side is frozen, so it reads unseen scenes as it "
        "reads training ones. Training, evaluation and search then load the frozen text "
        "tower to encode each distinct caption token once. On the generated benchmark it "
        "took order twins from 66 / 72 to 74 / 79 (t2v / v2t), docs/benchmarks.md.",
    )
    word_timing_centred: bool = Field(
        True,
        description="Word timing observes each token against the frames after taking out "
        "what all the caption's tokens share (their mean unit embedding). Without it, a "
        "frame that looks a little more like every word draws the observed time of most "
        "tokens to itself, and the term reads a trend of the clip, not when each named thing "
        "is seen. On the generated benchmark over three seeds: order twins 72.4 / 79.6 "
        "against 70.6 / 74.7 (t2v / v2t), two-stage R@1 70.4 / 74.4 against 71.9 / 72.8.",
    )
    word_timing_salience: bool = Field(
        False,
        description="Weight each token's share of the word timing also by how far its frozen "
        "similarity to the frames moves over the clip (highest less lowest, sharpened; a "
        "learned weight from 1, added to the importance before its softmax): a token that "
        "looks the same in every frame cannot say when anything happens.",
    )
    log_term_scales: bool = Field(
        False,
        description="Learn the grounding and word-timing terms' scales in log space, as the "
        "match term's (and CLIP's logit scale). A plain scale moves by about the learning rate "
        "a step under AdamW: on the generated benchmark both end where they start (2.15 and "
        "1.91 from 2.0), so their weight beside the match term is set by the init, not learned. "
        "In log space they barely move either (2.37 and 1.81 on seed 0); over seeds 0 and 1 "
        "two-stage R@1 76.95 / 75.6 and 72.5 / 74.2 against 73.6 / 76.2 and 74.0 / 75.2, "
        "order twins t2v 80.1 and 71.9 against 75.8 and 71.5: within the seed spread, off.",
    )
    word_presence_term: bool = Field(
        False,
        description="Add a word-presence term: how strongly the clip shows each caption "
        "token, read as the soft maximum over frames of the token's own frozen embedding "
        "against each frame's frozen embedding, less that token's mean over the training "
        "frames (so a word that matches everything does not lift its captions), weighted by "
        "a learned importance per token. Like word timing its observed side is frozen; it "
        "reads whether a named colour or shape is there at all, which timing cannot.",
    )
    selection_samples: int = Field(
        100, ge=1, description="Perturbed top-M during training: noisy draws."
    )
    selection_sigma: float = Field(
        0.05,
        gt=0,
        description="Perturbed top-M during training: noise scale (TS2-Net: sigma 0.05).",
    )


class TrainConfig(_Section):
    """Re-ranker training on cached tokens."""

    loss: Literal["listwise", "bce"] = Field(
        "listwise",
        description='"listwise": softmax cross-entropy over real stage-1 top-K lists, '
        "text->video and video->text, the caption's own clip played backwards always in its "
        "list; \"bce\": the paper's binary VTM loss over (positive, hard negative video, hard "
        "negative caption).",
    )
    list_size: int = Field(
        15,
        ge=2,
        description="K of the training lists (the positive is put in when stage 1 missed it).",
    )
    list_batch_size: int = Field(
        16, ge=1, description="listwise: captions (and as many videos) per step."
    )
    captions_per_epoch: Literal["all", "one_per_video"] = Field(
        "one_per_video",
        description='listwise: an epoch visits every caption ("all") or one random caption per '
        'video ("one_per_video": as many steps as videos; the other captions come in later '
        "epochs).",
    )
    lists_from: Literal["cross_fitted", "zero_shot", "stage1"] = Field(
        "cross_fitted",
        description="Which stage 1 ranks the training lists: 'cross_fitted' (k stage-1 models, "
        "each listing only the fold of videos it never saw: lists as hard as at test, k more "
        "stage-1 trainings), 'zero_shot' (the untrained meanP similarity: honest and free, "
        "but a weaker ranker than the one at test), or 'stage1' (the stage 1 trained on all "
        "of them, which has memorised its captions: lists too easy).",
    )
    stage1_folds: int = Field(
        2,
        ge=2,
        description="lists_from=cross_fitted: the number of folds (stage-1 trainings).",
    )
    fold_epochs: int | None = Field(
        4,
        ge=1,
        description="lists_from=cross_fitted: epochs of each fold's stage 1 (None: "
        "stage1.epochs). The lists need a stage 1 that never saw their captions and ranks "
        "about as well as the one at test, not its last points of R@1: on the generated "
        "benchmark 4 epochs gave the same two-stage R@1 as 12 within a point, in a third of "
        "the time.",
    )
    epochs: int = Field(
        6,
        ge=1,
        description="Training epochs of the cosine schedule. On the generated benchmark 3 cost "
        "10 to 12 points of R@1 and 8 validated and tested lower than 6 (validation 75.75 "
        "against 83.5).",
    )
    batch_size: int = Field(64, ge=2, description="bce: captions per step.")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="Weight decay.")
    warmup_fraction: float = Field(
        0.05, ge=0, lt=1, description="Share of training spent warming up the learning rate."
    )
    grad_clip: float = Field(1.0, gt=0, description="Gradient norm clipping.")
    hard_negatives: bool = Field(
        True,
        description="Sample hard negatives from stage 1 (False: random negatives only).",
    )
    random_negatives: int = Field(
        2,
        ge=0,
        description="Extra random negative videos per caption, beside the hard video and the "
        "hard caption.",
    )
    reversed_negatives: bool = Field(
        True,
        description="One more negative per caption: its own video played backwards (same "
        "frames, reversed order), which only temporal modelling can reject.",
    )
    swapped_negatives: bool = Field(
        False,
        description="listwise: one more negative per caption: its own video with the halves of "
        "its frames exchanged, each half still played forwards (\"A, then B\" becomes \"B, then "
        "A\"), which only a model of the order of events can reject. Off by default: on the "
        "generated benchmark it did not raise order-twin accuracy (t2v 67.6 vs 68.8) and cost "
        "4 points of text-to-video R@1.",
    )
    caption_variants: int = Field(
        0,
        ge=0,
        description="listwise: per caption, this many variants that differ from it in one "
        "word (a word replaced by another the training captions use between the same two "
        "neighbours, or two such words of the caption exchanged) take the last places of "
        "its video's caption list: negatives that only binding each attribute to its object "
        "can reject. Encoded by the frozen text tower before training. 0: off. Off by "
        "default: on the generated benchmark over four seeds, 1 variant raised video-to-text "
        "R@1 on every seed (mean 75.5 against 73.9) and lowered text-to-video R@1 on three "
        "(mean 72.7 against 72.2, one seed +6); 3 variants lowered both.",
    )
    caption_variant_max_similarity: float = Field(
        0.9,
        gt=-1,
        le=1,
        description="Caption variants: a word is not replaced by, or exchanged with, one "
        "whose one-word caption the frozen text tower embeds at a cosine above this (likely "
        "a synonym: the variant could still be true). 1: no such check.",
    )
    order_contrast: float = Field(
        0.0,
        ge=0,
        description="listwise: weight of the order contrast, a loss on four more pairs per "
        "caption: the caption and its clip as they are, each rearranged (order_contrast_with: "
        "the caption's inner words and the clip's frames), and both. It rewards only the "
        "interaction, matching what is named first with what is seen first; whatever "
        "depends on the caption or the clip alone cancels. 0: off. Off by default: on the "
        "generated benchmark at weight 1 it changed order-twin accuracy (t2v) by +2, -10 and "
        "-3 points on three seeds, level with the default or below; weight 3 was worse.",
    )
    grounding_consistency: float = Field(
        0.0,
        ge=0,
        description="listwise: weight of a loss on each caption's own pair that pulls every "
        "caption token's expected time (read from the text by the grounding term) towards "
        "where the term observes that token in the clip (held fixed), so the caption side "
        "learns when what it names happens even after the ranking loss is satisfied. Needs "
        "reranker.grounding_term; 0: off.",
    )
    weight_average: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Decay of an exponential moving average of the re-ranker's weights "
        "(0.99: about the last 100 steps); validation, early stopping and the saved model "
        "read the average, training steps the live weights. None: off.",
    )
    word_timing_consistency: float = Field(
        0.0,
        ge=0,
        description="listwise: weight of a loss on each caption's own pair that pulls every "
        "caption token's expected time in the word-timing term (read from the text) towards "
        "the time the frozen encoder observes that token at in the clip (held fixed). The "
        "observed side is frozen, so the target is as right on the first step as on the "
        "last. Needs reranker.word_timing_term; 0: off.",
    )
    word_timing_ranking: float = Field(
        0.0,
        ge=0,
        description="listwise: weight of a loss that asks the word-timing term on its own to "
        "rank each caption's clip above the same clip played backwards (softplus(-2z) of its "
        "logit z at its current scale): in the full logit the temporal states can already "
        "reject a reversed clip, which leaves the timing term, the part that reads when each "
        "named thing is seen, without a reason to learn. Needs reranker.word_timing_term; "
        "0: off.",
    )
    order_contrast_with: Literal["halves_swapped", "backwards"] = Field(
        "halves_swapped",
        description="The order contrast's rearrangement: 'halves_swapped' (words rotated by "
        "half their count, frames likewise: what was named or seen second comes first) or "
        "'backwards' (words and frames reversed: every two words named in the other order).",
    )
    stage1_residual: float = Field(
        0.0,
        ge=0,
        description="listwise: train on stage 1 + stage 2, as fusion will use them: every "
        "list entry's logit gets this times stage 1's own score of it, at the temperature "
        "that makes stage 1 its best listwise softmax on the training lists (fit there). The "
        "re-ranker starts where stage 1 is and learns what it leaves; a confident stage-2 "
        "mistake against a clear stage-1 margin costs in training as it will in fusion. The "
        "offsets grow with the curriculum's share of hard list entries (at full strength on "
        "the first, random lists they starve stage 2). The fusion weight is still learned on "
        "validation. Off (0): on the generated benchmark over seeds 0 to 2, 1 gave two-stage "
        "70.1 / 68.6 against 72.1 / 73.8 (t2v / v2t) and colour twins t2v 97.9 against 98.0, "
        "see docs/benchmarks.md.",
    )
    stage1_distillation: float = Field(
        0.0,
        ge=0,
        description="listwise: weight of a distillation term that asks the re-ranker to order "
        "each list's negatives as stage 1 does: the KL divergence from stage 1's softmax over a "
        "list's negatives (its own scores at the temperature fit on the training lists, as for "
        "stage1_residual) to the re-ranker's over the same negatives. The right item and the "
        "rearranged clips are left out, so it never argues with the label: stage 1 reads "
        "colour and shape from the frozen tower's sentence embedding and is at chance on "
        "position and direction, and the term passes on only how it ranks wrong answers. "
        "Off (0): on a generated corpus of another seed it lifts stage 2's own colour twins "
        "(92.0 to 96.5 at 0.2, 98.8 at 1) but costs position, direction and R@1 (seed 0: "
        "72.1 / 71.3 at 0.2, 61.5 / 59.2 at 1, against 70.3 / 76.8), see docs/benchmarks.md.",
    )
    hard_negative_warmup: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Curriculum: the share of hard (vs random) negatives grows 0 -> 1 over "
        "this fraction of training; 0 = hard from the first step (BLIP), which stalls a model "
        "trained from scratch.",
    )
    hard_negative_temperature: float = Field(
        0.05,
        gt=0,
        description="Softmax temperature over stage-1 similarities when sampling hard "
        "negatives.",
    )
    negative_source: Literal["similarity", "stage1_top_k"] = Field(
        "similarity",
        description="Where hard negatives come from: the full stage-1 similarity, or only the "
        "stored stage-1 top-K per query (Lance table stage1_candidates).",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "bf16",
        description="Mixed precision of the training and scoring forward on CUDA (CPU always "
        "runs fp32); fp16 adds a GradScaler.",
    )
    val_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of train videos (with their captions) held out to validate each "
        "epoch on two-stage R@1 when data.val_split cannot validate; 0 = then no validation, "
        "no early stopping.",
    )
    early_stopping_patience: int = Field(
        3,
        ge=1,
        description="Epochs without a better validation R@1 before stopping; the best weights "
        "are kept.",
    )
    seed: int = Field(0, description="Training seed.")
    torch_threads: int = Field(
        2, ge=1, description="torch threads of stage-1 and re-ranker training."
    )

    @property
    def reads_stage1_scores(self) -> bool:
        """Whether training reads stage 1's score of every list entry (stage1_residual,
        stage1_distillation): only then do the training lists keep their similarities."""
        return self.stage1_residual > 0 or self.stage1_distillation > 0


class EvalConfig(_Section):
    """Two-stage evaluation."""

    top_k: int = Field(15, ge=1, description="K: stage-1 candidates the re-ranker scores.")
    fusion_weight: float | None = Field(
        None,
        description="stage1 + w * stage2 over the top K; None: w chosen per direction on the "
        "re-ranker's validation split (fusion_pick), stored with the model.",
    )
    fusion_pick: Literal["likelihood", "recall"] = Field(
        "likelihood",
        description="How validation chooses w: 'likelihood' fits a listwise softmax of "
        "a * stage1 + b * stage2 over the top K to the right items (w = b / a); 'recall' takes "
        "the best validation R@1 of a grid (two_stage.FUSION_WEIGHT_GRID). R@1 over a few "
        "hundred queries cannot tell neighbouring weights apart; the likelihood also counts "
        "how far each right item is from first, so a confident stage-2 mistake against a "
        "clear stage-1 margin weighs in.",
    )
    fusion_score: Literal["prob", "logit"] = Field(
        "logit",
        description="Stage-2 score added to the stage-1 cosine: the raw logit (a listwise "
        "model's scores are relative, so squashing them adds nothing) or the VTM probability.",
    )
    batch_size: int = Field(256, ge=1, description="Text-video pairs per re-ranker forward.")


class SearchConfig(_Section):
    """Text queries against an index (`crosstvr search`, the crosstvr-search/batch
    deployment): stage 1 over every indexed video, the re-ranker over its top eval.top_k."""

    k: int = Field(10, ge=1, description="Results shown per query.")
    model: str = Field(
        "champion",
        description="Registry alias (champion | candidate, resolved for the index's dataset + "
        "encoder) or the MLflow run id of a finished benchmark run.",
    )
    rerank: bool = Field(
        True, description="Re-rank stage 1's top eval.top_k (False: stage 1 only)."
    )
    exact_below: int = Field(
        50_000,
        ge=1,
        description="Exact cosine search below this many videos; past it the stage-1 "
        "embeddings get a LanceDB ANN index, whose recall against exact search is measured "
        "when it is built.",
    )


class OrchestrationConfig(_Section):
    """How the flows' Prefect tasks retry transient failures (a lost Ray node, a storage or
    tracking-server hiccup). Retried steps redo little: the index skips what it committed,
    training resumes from its last checkpoint."""

    task_retries: int = Field(1, ge=0, description="Retries of every task but the index.")
    index_retries: int = Field(2, ge=0, description="Retries of the index task.")
    retry_delay_s: float = Field(5.0, ge=0, description="Seconds between retries.")


class TrackingConfig(_Section):
    """MLflow tracking."""

    tracking_uri: str | None = Field(
        None,
        description="None: $MLFLOW_TRACKING_URI if set, else a SQLite store under "
        "`<home>/mlflow`.",
    )
    experiment: str = Field("crosstvr", description="MLflow experiment name.")
    log_model: bool = Field(
        True,
        description="Log (and register) the trained models; search needs a logged re-ranker.",
    )


class CrossTVRConfig(_Section):
    """Everything a run needs to know."""

    home: str = Field(
        default_factory=default_home,
        description="Where datasets, Lance tables, weights, run files and the default MLflow "
        "store live.",
    )
    data: DataConfig = Field(DataConfig(), description="The corpus.")
    encoder: EncoderConfig = Field(EncoderConfig(), description="The frozen encoder.")
    pretrain: PretrainConfig = Field(
        PretrainConfig(), description="Pretraining of the embedded encoder."
    )
    sampling: SamplingConfig = Field(SamplingConfig(), description="Frame sampling.")
    index: IndexConfig = Field(IndexConfig(), description="The index step.")
    ray: RayConfig = Field(RayConfig(), description="Ray runtime and stage resources.")
    stage1: Stage1Config = Field(Stage1Config(), description="Stage-1 candidates.")
    reranker: RerankerConfig = Field(RerankerConfig(), description="The re-ranker model.")
    train: TrainConfig = Field(TrainConfig(), description="Re-ranker training.")
    eval: EvalConfig = Field(EvalConfig(), description="Two-stage evaluation.")
    search: SearchConfig = Field(SearchConfig(), description="Text search.")
    tracking: TrackingConfig = Field(TrackingConfig(), description="MLflow tracking.")
    orchestration: OrchestrationConfig = Field(
        OrchestrationConfig(), description="Task retries."
    )

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


# --- the field descriptions as Markdown (`crosstvr config --explain`, docs/configuration.md)

EXPLAIN_COMMAND = ".venv/bin/crosstvr config --explain > docs/configuration.md"
_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _bounds(metadata: list[Any]) -> str:
    found = [f"{sign} {getattr(m, attr)}" for m in metadata for attr, sign in _BOUNDS
             if getattr(m, attr, None) is not None]
    return f" ({', '.join(found)})" if found else ""


def _type_text(tp: Any) -> str:
    """A field's type as a config file sees it: `int (>= 1) | null`, `"a" | "b"`."""
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else _value_text(a) for a in get_args(tp))
    if origin in (Union, UnionType):
        return " | ".join(_type_text(a) for a in get_args(tp))
    if origin is Annotated:
        base, *extra = get_args(tp)
        meta = [m for e in extra for m in getattr(e, "metadata", [e])]
        return _type_text(base) + _bounds(meta)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_text(a) for a in get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _value_text(value: Any) -> str:
    """A value as written in a YAML config: null, true, 0.002, text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", r"\|").replace("\n", " ")


def _code(text: str) -> str:
    return _cell(f"`{text}`")


def _default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:  # computed when a config is made: say how
        doc = (field.default_factory.__doc__ or "computed").strip().splitlines()[0]
        return _cell(doc.rstrip("."))
    return _code(_value_text(field.default))


def _is_section(field: FieldInfo) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, _Section)


def _table(model: type[_Section], prefix: str, values: _Section | None) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        if _is_section(field):
            continue
        current = None
        if values is not None:
            value = getattr(values, name)
            if value != field.get_default(call_default_factory=True):
                current = _code(_value_text(value))
        rows.append((f"`{prefix}{name}`", _code(_type_text(field.annotation) + _bounds(
            field.metadata)), _default_text(field), current, _cell(field.description or "")))
    with_current = any(row[3] is not None for row in rows)
    head = ["key", "type", "default", *(["current"] if with_current else []), "description"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, type_text, default, current, description in rows:
        cells = [key, type_text, default, *([current or ""] if with_current else []), description]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _doc(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


def explain(cfg: CrossTVRConfig | None = None) -> str:
    """Every config key as Markdown: per section its docstring and a table of key, type,
    default and description (plus the `current` value where `cfg` differs from the default).
    docs/configuration.md is this text for `cfg=None`."""
    lines = [
        "# Configuration",
        "",
        f"Generated from the field descriptions in `crosstvr_core/config.py` by "
        f"`{EXPLAIN_COMMAND}`; edit the descriptions there, not this file.",
        "",
        _doc(CrossTVRConfig) + " A run reads a YAML or TOML file (`--config`), then dotted "
        "`key=value` overrides (`train.epochs=3`, `data.root=null`); values are YAML scalars, and "
        "`null` is what the descriptions call None.",
        "",
        *_table(CrossTVRConfig, "", cfg),
    ]
    for name, field in CrossTVRConfig.model_fields.items():
        if not _is_section(field):
            continue
        section = field.annotation
        lines += ["", f"## `{name}`: {(field.description or '').rstrip('.')}", "", _doc(section), "",
                  *_table(section, f"{name}.", None if cfg is None else getattr(cfg, name))]
    return "\n".join(lines) + "\n"
