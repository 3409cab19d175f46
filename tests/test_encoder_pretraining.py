"""Encoder pretraining on generated stills: the data, the checkpoint, the step that reuses it.

The stills are checked against their own pixels (a caption's region is where the colour is);
the pretrained checkpoint is checked by loading it as the index does and comparing with
open_clip's own encoders of the same weights; the step runs against a real SQLite MLflow store.
"""

from __future__ import annotations

import re

import mlflow
import numpy as np
import open_clip
import pytest
import torch

from crosstvr_core.config import STILLS_PRETRAINED, PretrainConfig, load_config
from crosstvr_core.models.encoder import (
    EncoderError,
    EncoderSpec,
    load_frozen_encoder,
    register_bundled_model_configs,
)
from crosstvr_core.synthetic import stills as stills_module
from crosstvr_core.synthetic.grammar import SHAPE_WORDS, SIZE_WORDS
from crosstvr_core.synthetic.render import render_frames
from crosstvr_core.synthetic.scenes import _LINE, COLOURS, REGIONS, SceneObject, VideoSpec
from crosstvr_core.synthetic.stills import (
    generate_stills,
    moved_object,
    still_caption,
    visible_objects,
)
from crosstvr_core.training.encoder_pretraining import (
    StillsData,
    checkpoint_path,
    encode_text_trimmed,
    pair_contrast_loss,
    pretrain_encoder,
    resolve_pretrained,
    resolve_text_tokens,
    stills_checkpoint,
    swapped_caption,
    swapped_caption_accuracy,
)
from crosstvr_core.training.encoder_pretraining import (  # an alias: pytest would collect test_*
    excluded_test_scenes as benchmark_test_scenes,
)
from tests.conftest import TINY_CONFIG

MODEL = "crosstvr-tiny-vit"
SIZE, FRAMES = 64, 16  # the stills' frame size (the tiny encoder's) and clip length
TIME_WORDS = ("moves", "moving", "slides", "travels", "then", "appears", "disappears",
              "vanishes", "while", "before", "after", "turns", "changes")


def _spec(kind: str, *objects: SceneObject, seed: int = 3) -> VideoSpec:
    return VideoSpec("s", "train", kind, "", "", tuple(objects), "grey", seed)


def _pixel_region(frame: np.ndarray, colour: str) -> str | None:
    """The 3 x 3 region whose centre is nearest the centroid of `colour`'s pixels."""
    ys, xs = np.nonzero((frame == COLOURS[colour]).all(-1))
    if not len(xs):
        return None
    col, row = (int(np.argmin([abs((c + 0.5) / SIZE - line) for line in _LINE]))
                for c in (xs.mean(), ys.mean()))
    return next(name for name, cell in REGIONS.items() if cell == (col, row))


def _phrase(obj) -> str:
    sizes = "|".join(SIZE_WORDS[obj.size])
    shapes = "|".join(SHAPE_WORDS[obj.shape])
    return rf"\ba (?:{sizes}) {obj.colour} (?:{shapes}) in the {obj.region}\b"


# --- the stills ---------------------------------------------------------------------------
@pytest.mark.parametrize(("direction", "band", "first", "last"), [
    ("right", "middle", "middle left", "middle right"),
    ("left", "bottom", "bottom right", "bottom left"),
    ("up", "centre", "bottom centre", "top centre"),
    ("down", "left", "top left", "bottom left"),
])
def test_a_movers_region_follows_its_frame(direction, band, first, last):
    spec = _spec("motion",
                 SceneObject("square", "red", "large", band, "mover", direction=direction),
                 SceneObject("circle", "blue", "small", "top right", "still"))
    frames = render_frames(spec, SIZE, FRAMES)
    seen = []
    for t in range(FRAMES):
        shown = {o.colour: o for o in visible_objects(spec, t, SIZE)}
        assert set(shown) == {"red", "blue"}
        assert shown["red"].region == _pixel_region(frames[t], "red"), t  # where it is drawn
        assert shown["blue"].region == "top right"
        seen.append(shown["red"].region)
    assert seen[0] == first and seen[-1] == last
    assert len(set(seen)) == 3  # it crosses the frame: three regions along its band


def test_events_show_each_phase():
    spec = _spec("events",
                 SceneObject("circle", "red", "small", "top left", "leaves"),
                 SceneObject("square", "blue", "large", "bottom right", "arrives"),
                 SceneObject("ring", "yellow", "large", "centre", "changes",
                             colour_after="purple"))
    frames = render_frames(spec, SIZE, FRAMES)
    for t in range(FRAMES):
        shown = {o.colour: o.region for o in visible_objects(spec, t, SIZE)}
        expected = ({"red": "top left", "yellow": "centre"} if t < FRAMES // 2
                    else {"blue": "bottom right", "purple": "centre"})
        assert shown == expected, t
        for colour in COLOURS:  # the caption's objects are exactly the painted ones
            assert (_pixel_region(frames[t], colour) is not None) == (colour in shown), (t, colour)


def test_captions_name_every_visible_object_and_no_time():
    spec = _spec("motion",
                 SceneObject("triangle", "green", "small", "top", "mover", direction="left"),
                 SceneObject("cross", "orange", "large", "bottom left", "still"),
                 SceneObject("diamond", "cyan", "small", "centre", "still"))
    shown = visible_objects(spec, 5, SIZE)
    rng = np.random.default_rng(0)
    for _ in range(20):
        text = still_caption(shown, "dark", rng)
        for obj in shown:
            assert re.search(_phrase(obj), text), (obj, text)
        assert text.count(" and ") == len(shown) - 1
        assert not set(re.findall(r"\w+", text)) & set(TIME_WORDS), text
    assert still_caption([], "light", rng).startswith("nothing but the background")


def test_generated_stills_are_deterministic_and_timeless():
    first = list(generate_stills(24, SIZE, seed=5))
    again = list(generate_stills(24, SIZE, seed=5))
    other = list(generate_stills(24, SIZE, seed=6))
    assert len(first) == 24
    assert all(f.shape == (SIZE, SIZE, 3) and f.dtype == np.uint8 for f, _ in first)
    assert [c for _, c in first] == [c for _, c in again]
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(first, again, strict=True))
    assert [c for _, c in first] != [c for _, c in other]
    for _, text in first:
        assert not set(re.findall(r"\w+", text)) & set(TIME_WORDS), text


@pytest.mark.parametrize("spec", [
    _spec("motion", SceneObject("square", "red", "large", "middle", "mover", direction="right"),
          SceneObject("circle", "blue", "small", "top left", "still")),
    _spec("motion", SceneObject("ring", "green", "small", "left", "mover", direction="up")),
    _spec("events", SceneObject("circle", "red", "small", "top left", "leaves"),
          SceneObject("ring", "yellow", "large", "centre", "changes", colour_after="purple")),
])
def test_a_moved_object_changes_only_its_own_place_in_pixels_and_caption(spec):
    rng = np.random.default_rng(0)
    for frame in (2, 12):
        moved = moved_object(spec, frame, SIZE, rng)
        before = {(o.shape, o.colour): o.region for o in visible_objects(spec, frame, SIZE)}
        after = {(o.shape, o.colour): o.region for o in visible_objects(moved, frame, SIZE)}
        assert before.keys() == after.keys()
        changed = [look for look in before if before[look] != after[look]]
        assert len(changed) == 1, (before, after)
        assert sum(a != b for a, b in zip(spec.objects, moved.objects, strict=True)) == 1
        assert moved.seed == spec.seed and moved.background == spec.background
        image = render_frames(moved, SIZE, FRAMES)[frame]
        for (_, colour), region in after.items():  # drawn where its caption says
            assert _pixel_region(image, colour) == region, (frame, colour)
    empty = _spec("events", SceneObject("circle", "red", "small", "top left", "arrives"))
    assert moved_object(empty, 0, SIZE, rng) is None  # nothing shown in the first half


def test_moved_pairs_keep_the_pair_together_and_zero_changes_nothing():
    plain = list(generate_stills(20, SIZE, seed=4))
    assert [c for _, c in generate_stills(20, SIZE, seed=4, moved_pairs=0.0)] == \
        [c for _, c in plain]
    moved = list(generate_stills(20, SIZE, seed=4, moved_pairs=1.0))
    assert moved[0][1] == plain[0][1]  # the same first scene (later ones: other captions)
    differs = 0
    for (first, text_a), (second, text_b) in zip(moved[0::2], moved[1::2], strict=True):
        regions = [set(re.findall(r"in the ([a-z ]+?)(?: and |$| on a )", t))
                   for t in (text_a, text_b)]
        colours = [set(re.findall("|".join(COLOURS), t)) for t in (text_a, text_b)]
        if "nothing" in text_a:
            continue
        assert colours[0] == colours[1], (text_a, text_b)  # the same objects ...
        assert regions[0] != regions[1], (text_a, text_b)  # ... one of them elsewhere
        differs += int((first != second).any())
    assert differs >= 8
    with pytest.raises(ValueError, match="moved_pairs"):
        next(generate_stills(2, SIZE, seed=4, moved_pairs=1.5))


def test_excluded_scenes_never_appear(monkeypatch):
    """Record the scenes rendered without exclusion, exclude some, and they are never drawn."""
    rendered: list[tuple] = []
    real_render = stills_module.render_frames

    def recording(spec, *args):
        rendered.append(spec.content)
        return real_render(spec, *args)

    monkeypatch.setattr(stills_module, "render_frames", recording)
    list(generate_stills(40, SIZE, seed=1))
    free = list(rendered)
    excluded = frozenset(free[:6])
    rendered.clear()
    stills = list(generate_stills(40, SIZE, seed=1, excluded=excluded))
    assert len(stills) == 40
    assert not set(rendered) & excluded
    assert rendered != free
    # the benchmark's test scenes are what the pretraining step excludes
    test_scenes = benchmark_test_scenes(2, 0)
    assert len(test_scenes) == 16 and all(kind in ("motion", "events") for kind, _ in test_scenes)


def test_swapped_captions_change_exactly_one_region_or_colour():
    rng = np.random.default_rng(0)
    text = "a big red disc in the top centre and a tiny blue ring in the centre"
    for _ in range(20):
        region = swapped_caption(text, "region", rng)
        assert region.startswith("a big red disc in the ") and region.endswith(
            " and a tiny blue ring in the centre")
        assert region != text and "in the top centre" not in region
        colour = swapped_caption(text, "colour", rng)
        assert colour.replace(colour.split()[2], "red", 1) == text and colour.split()[2] not in (
            "red", "blue")
    assert swapped_caption("nothing but the background", "region", rng) is None


class _Oracle(torch.nn.Module):
    """Image side: which of two stills; text side: whether the caption says "top centre"
    (factor region) - a model that reads the region, and one that reads nothing."""

    def __init__(self, reads: bool) -> None:
        super().__init__()
        self.reads = reads
        self.visual = type("V", (), {"preprocess_cfg": {"mean": (0, 0, 0), "std": (1, 1, 1)}})()

    def encode_image(self, images, normalize=False):
        return torch.tensor([[1.0, 0.0]]).expand(len(images), 2)

    def encode_text(self, tokens, normalize=False):
        said = torch.tensor([[1.0, 0.0] if t else [0.0, 1.0] for t in tokens[:, 0].tolist()])
        return said if self.reads else torch.ones(len(tokens), 2)


def test_swapped_caption_accuracy_is_100_for_a_reader_and_50_or_less_for_a_blind_model(
        monkeypatch):
    from crosstvr_core.training import encoder_pretraining as module

    monkeypatch.setattr(module, "encode_text_trimmed",
                        lambda model, tokens, normalize=False: model.encode_text(tokens))
    captions = ["a red disc in the top centre"] * 6
    data = StillsData(torch.zeros(6, 4, 4, 3, dtype=torch.uint8),
                      torch.ones(6, 3, dtype=torch.long), captions)

    def tokenizer(texts):  # first id 1 when the caption still says "top centre"
        return torch.tensor([[int("top centre" in t), 0, 0] for t in texts])

    assert swapped_caption_accuracy(_Oracle(True), data, tokenizer, "region") == 100.0
    assert swapped_caption_accuracy(_Oracle(False), data, tokenizer, "region") == 0.0  # ties


def test_pair_loss_is_open_clips_loss_within_each_pair_that_differs():
    from open_clip.loss import ClipLoss

    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(8, 5), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(8, 5), dim=-1)
    scale = torch.tensor(7.0)
    differ = torch.tensor([True, False, True, True])
    expected = torch.stack([ClipLoss()(image[2 * p: 2 * p + 2], text[2 * p: 2 * p + 2], scale)
                            for p in (0, 2, 3)]).mean()
    assert torch.allclose(pair_contrast_loss(image, text, scale, differ), expected, atol=1e-6)
    assert float(pair_contrast_loss(image, text, scale, torch.zeros(4, dtype=torch.bool))) == 0


def test_pairs_that_differ_read_each_objects_colour_and_region():
    captions = ["a big red disc in the top centre and a tiny blue plus sign in the centre",
                "two objects: a small blue cross in the centre and a large red circle in the "
                "top centre on a dark background",  # the same things, other words
                "a big red disc in the top centre",
                "a big red disc in the bottom left",  # moved
                "nothing but the background", "a tiny pink ring in the centre"]
    data = StillsData(torch.zeros(6, 1), torch.zeros(6, 1), captions)
    assert data.pairs_that_differ().tolist() == [False, True, True]


# --- the checkpoint's name and resolution ---------------------------------------------------
def test_checkpoint_path_is_stable_and_follows_what_determines_it(tmp_path):
    cfg = PretrainConfig(steps=10)
    path = checkpoint_path(tmp_path, MODEL, cfg, "generated-test:seed=0:groups=2")
    assert path == checkpoint_path(tmp_path, MODEL, PretrainConfig(steps=10),
                                   "generated-test:seed=0:groups=2")
    assert path.parent == tmp_path and path.name.startswith(f"{MODEL}-stills-")
    others = {checkpoint_path(tmp_path, MODEL, PretrainConfig(steps=11), "generated-test:seed=0:groups=2"),
              checkpoint_path(tmp_path, MODEL, PretrainConfig(steps=10, lr=1e-3), "generated-test:seed=0:groups=2"),
              checkpoint_path(tmp_path, MODEL, cfg, "generated-test:seed=1:groups=2"),
              checkpoint_path(tmp_path, "ViT-B-32", cfg, "generated-test:seed=0:groups=2")}
    assert path not in others and len(others) == 4
    base = load_config(TINY_CONFIG, [f"home={tmp_path}"])
    assert stills_checkpoint(base).parent == tmp_path / "weights"
    # downstream settings do not change the encoder; the excluded test set does
    assert stills_checkpoint(load_config(TINY_CONFIG, [f"home={tmp_path}", "train.epochs=9"])) \
        == stills_checkpoint(base)
    assert stills_checkpoint(load_config(TINY_CONFIG, [f"home={tmp_path}", "data.seed=1"])) \
        != stills_checkpoint(base)


def test_auto_text_tokens_read_embeddings_only_for_the_stills_encoder():
    """The stills encoder caches input embeddings; real weights keep CrossTVR's last layer;
    an explicit choice always wins."""
    assert resolve_text_tokens(load_config(None, [])) == "embedding"
    for pretrained in ("openai", "/models/x.pt", "null"):
        cfg = load_config(None, [f"encoder.pretrained={pretrained}"])
        assert resolve_text_tokens(cfg) == "last"
    for choice in ("last", "embedding"):
        for pretrained in ("stills", "openai"):
            cfg = load_config(None, [f"encoder.text_tokens={choice}",
                                     f"encoder.pretrained={pretrained}"])
            assert resolve_text_tokens(cfg) == choice


def test_resolve_pretrained_names_the_missing_checkpoint(tmp_path):
    cfg = load_config(TINY_CONFIG, [f"home={tmp_path}"])
    assert cfg.encoder.pretrained == STILLS_PRETRAINED
    with pytest.raises(EncoderError, match="crosstvr pretrain") as err:
        resolve_pretrained(cfg)
    assert str(stills_checkpoint(cfg)) in str(err.value)
    stills_checkpoint(cfg).parent.mkdir(parents=True)
    stills_checkpoint(cfg).write_bytes(b"")
    assert resolve_pretrained(cfg) == str(stills_checkpoint(cfg))
    for value in ("openai", "/models/x.pt"):
        other = load_config(TINY_CONFIG, [f"home={tmp_path}", f"encoder.pretrained={value}"])
        assert resolve_pretrained(other) == value
    assert resolve_pretrained(load_config(None, ["encoder.pretrained=null"])) is None


# --- pretraining --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def three_steps(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    cfg = PretrainConfig(num_stills=128, num_eval_stills=64, steps=3, batch_size=32,
                         warmup_steps=1, log_every=2, torch_threads=1)
    logged = []
    summary = pretrain_encoder(MODEL, cfg, root / "enc.pt", weights_dir=root / "weights",
                               excluded=benchmark_test_scenes(2, 0), progress=False,
                               on_log=lambda step, record: logged.append((step, record)))
    return root, summary, logged


def test_pretraining_writes_a_checkpoint_and_a_summary(three_steps):
    root, summary, logged = three_steps
    assert summary["checkpoint"] == str(root / "enc.pt") and (root / "enc.pt").is_file()
    assert not list(root.glob("*.tmp"))
    assert [step for step, _ in logged] == [2, 3]  # every log_every steps, and the last
    assert [h["step"] for h in summary["history"]] == [2, 3]
    assert all(set(r) == {"loss", "logit_scale", "lr"} and np.isfinite(r["loss"])
               for _, r in logged)
    assert summary["final_loss"] == logged[-1][1]["loss"]
    for phase in ("random_init", "pretrained"):
        assert set(summary[phase]) == {"i2t_top1", "t2i_top1", "region_swap", "colour_swap"}
        assert all(0.0 <= v <= 100.0 for v in summary[phase].values())
    start = torch.load(next((root / "weights").glob("*random*.pt")))
    trained = torch.load(root / "enc.pt")
    assert start.keys() == trained.keys()
    assert not torch.equal(start["visual.conv1.weight"], trained["visual.conv1.weight"])


def test_the_index_loads_the_checkpoint_as_open_clip_does(three_steps):
    root, _, _ = three_steps
    encoder = load_frozen_encoder(EncoderSpec(MODEL, str(root / "enc.pt")))
    assert encoder.encoder_id.startswith(f"{MODEL}|sha256:")
    reference = open_clip.create_model(MODEL)
    reference.load_state_dict(torch.load(root / "enc.pt"))
    reference.eval()
    stills = list(generate_stills(6, SIZE, seed=9))
    frames = np.stack([f for f, _ in stills])
    texts = [t for _, t in stills]
    cls, _ = encoder.encode_frames(frames)
    eot, _, _ = encoder.encode_captions(texts)
    mean = torch.tensor(reference.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(reference.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
    pixels = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        torch.testing.assert_close(cls, reference.encode_image(pixels), atol=1e-5, rtol=1e-4)
        tokens = open_clip.get_tokenizer(MODEL)(texts)
        torch.testing.assert_close(eot, reference.encode_text(tokens), atol=1e-5, rtol=1e-4)


def test_trimmed_text_forward_matches_open_clip_features_and_gradients():
    """Pretraining runs the text tower only up to the batch's longest caption: the features
    and every parameter's gradient must be open_clip's encode_text over the full context."""
    register_bundled_model_configs()  # run alone, no earlier test has registered the model
    torch.manual_seed(0)
    model = open_clip.create_model(MODEL)
    texts = ["a red cube", "a large blue sphere in the top left and a small green cone moving"]
    tokens = open_clip.get_tokenizer(MODEL)(texts)
    assert int((tokens != 0).sum(1).max()) < tokens.shape[1] // 2  # there is padding to trim
    grads = []
    for encode in (lambda t: model.encode_text(t, normalize=True),
                   lambda t: encode_text_trimmed(model, t, normalize=True)):
        model.zero_grad()
        features = encode(tokens)
        (features * torch.linspace(-1, 1, features.shape[1])).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        grads[-1]["features"] = features.detach()
    full, trimmed = grads
    assert full.keys() == trimmed.keys() and "token_embedding.weight" in full
    for name in full:
        # float summation order differs between the two lengths and between CPUs: allow a
        # millionth of the tensor's largest entry (gradients reach 13 here)
        scale = max(1.0, float(full[name].abs().max()))
        torch.testing.assert_close(trimmed[name], full[name], atol=1e-6 * scale, rtol=1e-4,
                                   msg=name)
    model.attn_mask = None  # without the causal mask padding is attended to: no trimming
    torch.testing.assert_close(encode_text_trimmed(model, tokens), model.encode_text(tokens))


def test_the_contrastive_loss_falls(tmp_path):
    """One batch of 32 stills, 24 steps: the model must fit it (chance loss is ln 32 = 3.47)."""
    cfg = PretrainConfig(num_stills=32, num_eval_stills=0, steps=24, batch_size=32, lr=3e-4,
                         weight_decay=0.0, warmup_steps=3, log_every=1, torch_threads=1)
    summary = pretrain_encoder(MODEL, cfg, tmp_path / "enc.pt", weights_dir=tmp_path,
                               progress=False)
    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == 24 and summary["random_init"] == summary["pretrained"] == {}
    assert np.mean(losses[-3:]) < 0.6 * losses[0], losses


# --- the step: cached per machine, logged and registered -----------------------------------
SMALL_PRETRAIN = ["pretrain.num_stills=64", "pretrain.num_eval_stills=32", "pretrain.steps=2",
                  "pretrain.batch_size=32", "pretrain.torch_threads=1"]


@pytest.fixture()
def step_home(tmp_path):
    yield tmp_path
    mlflow.set_tracking_uri(None)


def test_the_step_pretrains_once_registers_and_then_reuses(step_home):
    from crosstvr_core.models.encoder import file_sha256
    from tasks.pretrain import (
        CHECKPOINT_TAG,
        ENCODER_MODEL,
        REUSED_TAG,
        SHA256_TAG,
        ensure_stills_encoder,
    )
    from tasks.tracking import parent_run

    cfg = load_config(TINY_CONFIG, [f"home={step_home}", *SMALL_PRETRAIN])
    with parent_run(cfg, "flow-like", {}) as parent_id:
        ref = ensure_stills_encoder(cfg, parent_id)
    path = stills_checkpoint(cfg)
    assert ref.checkpoint == str(path) and path.is_file() and not ref.reused
    assert ref.sha256 == file_sha256(path) and ref.model_version == "1"
    client = mlflow.MlflowClient(f"sqlite:///{step_home / 'mlflow' / 'mlflow.db'}")
    step = client.get_run(ref.mlflow_run_id)
    assert step.data.tags["mlflow.parentRunId"] == parent_id
    assert step.data.tags["mlflow.runName"] == "pretrain-encoder"
    assert step.data.params["pretrain.steps"] == "2"
    assert step.data.params["pretrain.num_excluded_scenes"] == "16"
    for key in ("pretrain/random_init_i2t_top1", "pretrain/i2t_top1", "pretrain/t2i_top1",
                "pretrain/region_swap", "pretrain/random_init_colour_swap",
                "pretrain/final_loss", "pretrain/seconds"):
        assert key in step.data.metrics, key
    assert [m.step for m in client.get_metric_history(ref.mlflow_run_id, "pretrain/loss")] == [2]
    artifacts = {a.path for a in client.list_artifacts(ref.mlflow_run_id)}
    assert {"checkpoint", "figures", "pretrain_summary.json"} <= artifacts
    assert f"checkpoint/{path.name}" in {
        a.path for a in client.list_artifacts(ref.mlflow_run_id, "checkpoint")}
    parent = client.get_run(parent_id).data.tags
    assert parent[CHECKPOINT_TAG] == str(path) and parent[REUSED_TAG] == "false"

    version = client.get_model_version_by_alias(ENCODER_MODEL, "champion")
    assert str(version.version) == ref.model_version and version.run_id == ref.mlflow_run_id
    # registered only after its run ended FINISHED
    assert step.info.status == "FINISHED" and version.creation_timestamp >= step.info.end_time
    assert version.tags[SHA256_TAG] == ref.sha256
    assert path.stem.endswith(version.tags["crosstvr.pretrain.config_hash"])
    assert client.get_model_version_by_alias(
        ENCODER_MODEL, f"stills-{version.tags['crosstvr.pretrain.config_hash']}"
    ).version == version.version
    # the registered model is the checkpoint: same text embedding as the file's weights
    registered = mlflow.pytorch.load_model(f"models:/{ENCODER_MODEL}@champion",
                                           map_location="cpu").eval()
    encoder = load_frozen_encoder(EncoderSpec(MODEL, str(path)))
    with torch.no_grad():
        tokens = open_clip.get_tokenizer(MODEL)(["a big red square in the centre"])
        torch.testing.assert_close(registered.encode_text(tokens),
                                   encoder.encode_captions(["a big red square in the centre"])[0])

    # again, with no parent: nothing trained, no new run, no new version
    mtime = path.stat().st_mtime_ns
    runs_before = len(client.search_runs([step.info.experiment_id]))
    again = ensure_stills_encoder(cfg)
    assert again.reused and again.checkpoint == str(path) and again.sha256 == ref.sha256
    assert again.summary is None and again.mlflow_run_id is None
    assert path.stat().st_mtime_ns == mtime
    assert len(client.search_runs([step.info.experiment_id])) == runs_before
    assert len(client.search_model_versions(f"name = '{ENCODER_MODEL}'")) == 1
    with parent_run(cfg, "flow-like-again", {}) as parent_id:
        ensure_stills_encoder(cfg, parent_id)
    assert client.get_run(parent_id).data.tags[REUSED_TAG] == "true"
    assert resolve_pretrained(cfg) == str(path)  # what the index now loads


def test_the_step_does_nothing_for_other_weights(step_home):
    from tasks.pretrain import ensure_stills_encoder

    cfg = load_config(TINY_CONFIG, [f"home={step_home}", "encoder.pretrained=null"])
    ref = ensure_stills_encoder(cfg)
    assert ref.checkpoint is None and not ref.reused
    assert not (step_home / "weights").exists() and not (step_home / "mlflow").exists()


def test_without_a_parent_the_step_logs_a_run_of_its_own(step_home):
    from tasks.pretrain import ensure_stills_encoder

    cfg = load_config(TINY_CONFIG, [f"home={step_home}", *SMALL_PRETRAIN,
                                    "pretrain.num_eval_stills=0", "tracking.log_model=false"])
    ref = ensure_stills_encoder(cfg)
    assert not ref.reused and ref.model_version is None
    client = mlflow.MlflowClient(f"sqlite:///{step_home / 'mlflow' / 'mlflow.db'}")
    run = client.get_run(ref.mlflow_run_id)
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.data.params["train.epochs"] == "2"  # the full config, as a flow's run has
    assert "pretrain/final_loss" in run.data.metrics
    assert "pretrain/i2t_top1" not in run.data.metrics  # no held-out stills, no accuracy
