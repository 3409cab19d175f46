"""Resolve the configured corpus to a folder + captions file; render it first if generated.

The generated benchmark lives in a directory named by a hash of its generation parameters,
so a changed size or seed renders a new benchmark instead of reusing stale clips. Rendering
is a Ray Data map over batches of video specs (one ffmpeg encodes a batch); clips that already
exist are kept, so an interrupted render resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import ray
from prefect import task

from crosstvr_core import synthetic
from crosstvr_core.config import CrossTVRConfig, DataConfig
from crosstvr_core.data.datasets import RetrievalDataset, load_folder_dataset
from tasks.corpus import load_corpus

CAPTIONS_FILE = "captions.jsonl"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetRef:
    """Where a corpus is and how to read it (the `data` section as JSON): small, picklable,
    what the flow passes between steps instead of the dataset itself."""

    name: str
    root: str
    captions_file: str | None = None
    data_json: str | None = None  # None: a rendered generated benchmark (folder + captions)

    def load(self) -> RetrievalDataset:
        if self.data_json is None:
            return load_folder_dataset(self.root, self.captions_file, self.name)
        return load_corpus(DataConfig.model_validate_json(self.data_json))


def generation_params(cfg: CrossTVRConfig) -> dict:
    d = cfg.data
    return {
        "num_train_videos": d.num_train_videos, "num_test_groups": d.num_test_groups,
        "captions_per_train_video": d.captions_per_train_video, "frame_size": d.frame_size,
        "rendered_frames": d.rendered_frames, "fps": d.fps, "seed": d.seed,
        "train_scenes": d.train_scenes, "generator": synthetic.GENERATOR_VERSION,
        # only when there are some, so a benchmark without them keeps its rendered folder
        **({"num_val_groups": d.num_val_groups} if d.num_val_groups else {}),
    }


def generated_root(cfg: CrossTVRConfig) -> Path:
    if cfg.data.root:
        return Path(cfg.data.root).expanduser().resolve()
    params = json.dumps(generation_params(cfg), sort_keys=True).encode()
    digest = hashlib.sha256(params).hexdigest()[:10]
    return cfg.home_path / "datasets" / f"{cfg.data.name}-{digest}"


def _render_batch(batch: dict, root: str, frame_size: int, num_frames: int, fps: int) -> dict:
    """One Ray Data batch: its clips rendered and encoded by one ffmpeg process."""
    specs = [synthetic.spec_from_json(text) for text in batch["spec"]]
    return {"path": synthetic.render_videos(specs, root, frame_size, num_frames, fps)}


def render_generated_benchmark(cfg: CrossTVRConfig) -> DatasetRef:
    d = cfg.data
    root = generated_root(cfg)
    captions = root / CAPTIONS_FILE
    if captions.is_file():  # written last: its presence means the render completed
        return DatasetRef(d.name, str(root), str(captions))
    root.mkdir(parents=True, exist_ok=True)
    specs = synthetic.make_benchmark_specs(d.num_train_videos, d.num_test_groups, d.seed,
                                           d.train_scenes, d.num_val_groups)
    items = [{"spec": synthetic.spec_to_json(s)} for s in specs]
    batch = d.render_batch_size
    ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // batch)))
    ds = ds.map_batches(
        _render_batch, batch_size=batch, batch_format="numpy", num_cpus=1,
        fn_kwargs={"root": str(root), "frame_size": d.frame_size,
                   "num_frames": d.rendered_frames, "fps": d.fps},
    )
    rendered = sum(len(b["path"]) for b in ds.iter_batches(batch_size=256, batch_format="numpy"))
    if rendered != len(specs):
        raise RuntimeError(f"generated benchmark: rendered {rendered} of {len(specs)} clips")
    (root / "generation.json").write_text(json.dumps(generation_params(cfg), indent=2))
    synthetic.write_captions_file(
        synthetic.caption_rows(specs, d.captions_per_train_video, d.seed), captions
    )
    return DatasetRef(d.name, str(root), str(captions))


def prepare_dataset(cfg: CrossTVRConfig) -> DatasetRef:
    """Generated: render (once) and point at it; any other format: read and check it."""
    if cfg.data.kind == "generated":
        ref = render_generated_benchmark(cfg)
    else:
        ref = DatasetRef(cfg.data.name, str(cfg.data.root), cfg.data.captions_file,
                         cfg.data.model_dump_json())
    dataset = ref.load()  # fail now, with the file's own error, not three steps later
    log.info("dataset %s: %s", dataset.name, dataset.summary())
    return ref


prepare_dataset_task = task(prepare_dataset, name="prepare-dataset")
