"""Unit tests for the generated fine-grained benchmark (crosstvr_core.synthetic)."""

from __future__ import annotations

import difflib
import json
from collections import Counter, defaultdict
from pathlib import Path

import ffmpeg
import numpy as np
import pytest

from crosstvr_core import synthetic as syn

FACTOR_WORDS = {
    "colour": set(syn.COLOURS),
    "position": {"top", "middle", "bottom", "left", "right", "centre", "side"},
    "direction": {
        "left",
        "right",
        "up",
        "down",
        "to",
        "the",
        "leftwards",
        "rightwards",
        "upwards",
        "downwards",
    },
}


@pytest.fixture(scope="module")
def specs() -> list[syn.VideoSpec]:
    return syn.make_benchmark_specs(num_train_videos=200, num_test_groups=60, seed=3)


def _test_groups(specs: list[syn.VideoSpec]) -> dict[str, dict[str, syn.VideoSpec]]:
    groups: dict[str, dict[str, syn.VideoSpec]] = defaultdict(dict)
    for spec in specs:
        if spec.split == "test":
            groups[spec.group][spec.variant] = spec
    return groups


def _changed_words(a: str, b: str) -> set[str]:
    wa, wb = a.split(), b.split()
    changed: set[str] = set()
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=wa, b=wb).get_opcodes():
        if op != "equal":
            changed |= set(wa[i1:i2]) | set(wb[j1:j2])
    return {w.strip(",") for w in changed}


def _decode(path: Path) -> np.ndarray:
    probe = ffmpeg.probe(str(path))["streams"][0]
    out, _ = (
        ffmpeg.input(str(path))
        .output("pipe:", format="rawvideo", pix_fmt="rgb24")
        .run(capture_stdout=True, capture_stderr=True)
    )
    return np.frombuffer(out, np.uint8).reshape(-1, probe["height"], probe["width"], 3)


# --------------------------------------------------------------------------- specs


def test_specs_are_deterministic(specs):
    again = syn.make_benchmark_specs(num_train_videos=200, num_test_groups=60, seed=3)
    assert again == specs
    other = syn.make_benchmark_specs(num_train_videos=200, num_test_groups=60, seed=4)
    assert other != specs


def test_test_set_does_not_depend_on_train_size(specs):
    fewer = syn.make_benchmark_specs(num_train_videos=5, num_test_groups=60, seed=3)
    assert [s for s in fewer if s.split == "test"] == [s for s in specs if s.split == "test"]


def test_counts_and_ids(specs):
    train = [s for s in specs if s.split == "train"]
    test = [s for s in specs if s.split == "test"]
    assert len(train) == 200 and len(test) == 60 * 4
    assert len({s.video_id for s in specs}) == len(specs)
    assert train[42].video_id == "train-00042" and train[42].group == "" == train[42].variant
    assert {s.kind for s in train} == {"motion", "order"}
    assert "test-g0007-colour" in {s.video_id for s in test}


def test_test_group_structure(specs):
    groups = _test_groups(specs)
    assert len(groups) == 60
    for gi, (gid, members) in enumerate(sorted(groups.items())):
        kind = "motion" if gi % 2 == 0 else "order"
        last = "direction" if kind == "motion" else "order"
        assert set(members) == {"base", "colour", "position", last}, gid
        assert {m.kind for m in members.values()} == {kind}
        assert len({m.seed for m in members.values()}) == 1, "a group shares its background"
        base = members["base"].objects
        if kind == "motion":
            ((shape, colour, band, direction),) = base
            diffs = {
                v: [i for i in range(4) if m.objects[0][i] != base[0][i]]
                for v, m in members.items()
            }
            assert diffs == {"base": [], "colour": [1], "position": [2], "direction": [3]}
            assert members["direction"].objects[0][3] == syn.REVERSE[direction]
        else:
            a, b = base
            assert (a[0], a[1]) != (b[0], b[1]) and a[2] != b[2]
            for variant, field in (("colour", 1), ("position", 2)):
                changed = [
                    (i, f)
                    for i in range(2)
                    for f in range(3)
                    if members[variant].objects[i][f] != base[i][f]
                ]
                assert len(changed) == 1 and changed[0][1] == field, (gid, variant)
            assert members["order"].objects == (b, a)


def test_test_scenes_distinct_and_train_disjoint_on_request():
    specs = syn.make_benchmark_specs(200, 60, seed=3, train_scenes="disjoint")
    test = [s.content for s in specs if s.split == "test"]
    assert len(set(test)) == len(test)
    train = {s.content for s in specs if s.split == "train"}
    assert not train & set(test)


def test_shared_train_scenes_recur_but_never_as_the_same_video(specs):
    test = {(s.content, s.seed) for s in specs if s.split == "test"}
    train = [s for s in specs if s.split == "train"]
    assert {s.content for s in train} & {content for content, _ in test}  # scenes recur
    assert not {(s.content, s.seed) for s in train} & test  # a test video never does
    with pytest.raises(ValueError, match="train_scenes"):
        syn.make_benchmark_specs(1, 1, train_scenes="both")


def test_motion_capacity_is_checked():
    assert len(syn.make_benchmark_specs(0, 72)) == 72 * 4
    with pytest.raises(ValueError, match="num_test_groups=73"):
        syn.make_benchmark_specs(0, 73)


# --------------------------------------------------------------------------- captions


def test_captions_are_deterministic_and_distinct(specs):
    spec = next(s for s in specs if s.split == "train")
    caps = syn.captions_for(spec, 3, seed=0)
    assert caps == syn.captions_for(spec, 3, seed=0)
    assert len(set(caps)) == 3
    many = syn.captions_for(spec, syn.num_paraphrases(spec.kind) + 2, seed=0)
    assert len(set(many)) == syn.num_paraphrases(spec.kind)
    assert syn.paraphrase(spec, 0) in many


def test_caption_examples():
    motion = syn.VideoSpec("x", "train", "motion", "", "", (("circle", "red", "top", "left"),), 0)
    assert syn.paraphrase(motion, 0) == "a red circle moves left along the top"
    assert syn.paraphrase(motion, 1) == (
        "along the top of the frame, a red circle is moving to the left"
    )
    order = syn.VideoSpec(
        "y",
        "train",
        "order",
        "",
        "",
        (("circle", "red", "top left"), ("square", "blue", "bottom right")),
        0,
    )
    assert syn.paraphrase(order, 0) == (
        "a red circle appears in the top left, then a blue square appears in the bottom right"
    )


def test_variant_captions_differ_only_in_factor_words(specs):
    for members in _test_groups(specs).values():
        base = members["base"]
        for index in range(syn.num_paraphrases(base.kind)):
            text = syn.paraphrase(base, index)
            for variant, spec in members.items():
                other = syn.paraphrase(spec, index)
                if variant == "base":
                    continue
                assert other != text
                if variant == "order":
                    assert sorted(other.replace(",", "").split()) == sorted(
                        text.replace(",", "").split()
                    )
                else:
                    assert _changed_words(text, other) <= FACTOR_WORDS[variant], (text, other)


def test_test_group_shares_paraphrase(specs):
    """The random test caption is chosen per group, so it too differs only in the factor."""
    for members in _test_groups(specs).values():
        (base_caption,) = syn.captions_for(members["base"], 1, seed=5)
        for variant in ("colour", "position", "direction"):
            if variant in members:
                (caption,) = syn.captions_for(members[variant], 1, seed=5)
                assert _changed_words(base_caption, caption) <= FACTOR_WORDS[variant]


def test_caption_rows_and_jsonl(specs, tmp_path):
    rows = syn.caption_rows(specs, captions_per_train_video=3, seed=0)
    assert len(rows) == 200 * 3 + 240
    assert rows == syn.caption_rows(specs, captions_per_train_video=3, seed=0)
    path = tmp_path / "sub" / "captions.jsonl"
    syn.write_captions_file(rows, path)
    assert [p.name for p in path.parent.iterdir()] == ["captions.jsonl"]
    back = [json.loads(line) for line in path.read_text().splitlines()]
    assert back == rows
    for row in back:
        assert set(row) == {"video", "caption", "split", "group", "variant"}
        assert row["video"] == f"videos/{row['split']}/{Path(row['video']).name}"
    test_rows = [r for r in back if r["split"] == "test"]
    assert Counter(r["variant"] for r in test_rows)["base"] == 60
    with pytest.raises(ValueError, match="row 0 lacks caption"):
        syn.write_captions_file([{"video": "v", "split": "train"}], path)


# --------------------------------------------------------------------------- frames


def test_frames_shape_and_determinism(specs):
    spec = specs[0]
    frames = syn.render_frames(spec, frame_size=64, num_frames=16)
    assert frames.shape == (16, 64, 64, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, syn.render_frames(spec, 64, 16))
    assert syn.render_frames(spec, 32, 6).shape == (6, 32, 32, 3)
    with pytest.raises(ValueError, match="frame_size must be even"):
        syn.render_frames(spec, frame_size=63)


def test_motion_moves_in_its_direction():
    spec = syn.VideoSpec(
        "m", "test", "motion", "g", "base", (("square", "blue", "top", "right"),), 1
    )
    frames = syn.render_frames(spec, 64, 8)
    blue = np.all(frames == syn.COLOURS["blue"], axis=-1)
    xs = [np.nonzero(blue[t])[1].mean() for t in range(8)]
    ys = [np.nonzero(blue[t])[0].mean() for t in range(8)]
    assert np.all(np.diff(xs) > 0)
    assert max(ys) < 64 / 3 and max(ys) - min(ys) < 1e-9


def test_direction_reversal_reverses_frames(specs):
    for members in _test_groups(specs).values():
        if "direction" in members:
            for size, count in ((64, 16), (32, 7)):
                fwd = syn.render_frames(members["base"], size, count)
                rev = syn.render_frames(members["direction"], size, count)
                assert np.array_equal(fwd[::-1], rev)
                assert not np.array_equal(fwd, rev)


def test_order_swap_keeps_frame_multiset(specs):
    def multiset(frames: np.ndarray) -> Counter:
        return Counter(f.tobytes() for f in frames)

    for members in _test_groups(specs).values():
        if "order" in members:
            for count in (16, 9):
                base = syn.render_frames(members["base"], 64, count)
                swap = syn.render_frames(members["order"], 64, count)
                assert multiset(base) == multiset(swap)
                assert not np.array_equal(base, swap)


# --------------------------------------------------------------------------- files


def test_render_video_writes_real_mp4(specs, tmp_path):
    spec = next(s for s in specs if s.split == "test" and s.kind == "order")
    rel = syn.render_video(spec, tmp_path, frame_size=64, num_frames=16, fps=8)
    assert rel == f"videos/test/{spec.video_id}.mp4"
    path = tmp_path / rel
    stream = ffmpeg.probe(str(path))["streams"][0]
    assert (stream["codec_name"], stream["pix_fmt"]) == ("h264", "yuv420p")
    assert (stream["width"], stream["height"], int(stream["nb_frames"])) == (64, 64, 16)
    assert [p.name for p in path.parent.iterdir()] == [path.name]

    decoded = _decode(path)
    rendered = syn.render_frames(spec, 64, 16)
    assert decoded.shape == rendered.shape
    assert np.abs(decoded.astype(int) - rendered.astype(int)).mean() < 6
    # The object's colour survives yuv420p: its centre decodes nearest to the right colour.
    (shape, colour, region), _ = spec.objects
    fx, fy = syn.REGIONS[region]
    pixel = decoded[0, int(fy * 64), int(fx * 64)].astype(int)
    names = list(syn.COLOURS)
    dists = [np.abs(pixel - np.array(syn.COLOURS[n])).sum() for n in names]
    assert names[int(np.argmin(dists))] == colour

    mtime = path.stat().st_mtime_ns
    assert syn.render_video(spec, tmp_path, 64, 16, 8) == rel
    assert path.stat().st_mtime_ns == mtime, "an existing clip is not re-encoded"


def test_encode_mp4_validates_and_cleans_up(tmp_path, monkeypatch):
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    target = tmp_path / "clip.mp4"
    syn.encode_mp4(frames, target, fps=4)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    with pytest.raises(ValueError, match="clip.mp4"):
        syn.encode_mp4(frames[..., :2], target, fps=4)
    with pytest.raises(ValueError, match="even"):
        syn.encode_mp4(np.zeros((4, 15, 16, 3), np.uint8), target, fps=4)

    # ffmpeg failing (here: it cannot open its output) names the path and keeps stderr.
    monkeypatch.setattr(syn, "_tmp_sibling", lambda path, suffix: tmp_path / "no" / "x.mp4")
    broken = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError, match="broken.mp4") as info:
        syn.encode_mp4(frames, broken, fps=4)
    assert "No such file" in str(info.value)
    assert not broken.exists()
