"""Unit tests for the generated fine-grained benchmark (crosstvr_core.synthetic*)."""

from __future__ import annotations

import difflib
import json
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import ffmpeg
import numpy as np
import pytest

from crosstvr_core import synthetic as syn
from crosstvr_core.synthetic import grammar, render
from crosstvr_core.synthetic.render import shape_mask

POSITION_WORDS = {"top", "middle", "bottom", "left", "right", "centre", "side"}
FACTOR_WORDS = {
    "colour": set(syn.COLOURS),
    "position": POSITION_WORDS,
    "direction": {w for forms in grammar.DIRECTION_WORDS.values() for p in forms for w in p.split()},
    "order": {w for pair in grammar.EVENT_VERBS for phrase in pair for w in phrase.split()},
}
NUM_GROUPS = 64


@pytest.fixture(scope="module")
def specs() -> list[syn.VideoSpec]:
    return syn.make_benchmark_specs(num_train_videos=300, num_test_groups=NUM_GROUPS, seed=3)


def _test_groups(specs: list[syn.VideoSpec]) -> dict[str, dict[str, syn.VideoSpec]]:
    groups: dict[str, dict[str, syn.VideoSpec]] = defaultdict(dict)
    for spec in specs:
        if spec.split == "test":
            groups[spec.group][spec.corner] = spec
    return groups


def _changed_words(a: str, b: str) -> set[str]:
    wa, wb = a.split(), b.split()
    changed: set[str] = set()
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=wa, b=wb).get_opcodes():
        if op != "equal":
            changed |= set(wa[i1:i2]) | set(wb[j1:j2])
    return {w.strip(",") for w in changed}


def _words(text: str) -> list[str]:
    return sorted(text.replace(",", "").split())


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
    again = syn.make_benchmark_specs(num_train_videos=300, num_test_groups=NUM_GROUPS, seed=3)
    assert again == specs
    other = syn.make_benchmark_specs(num_train_videos=300, num_test_groups=NUM_GROUPS, seed=4)
    assert other != specs


def test_test_set_does_not_depend_on_train_size(specs):
    fewer = syn.make_benchmark_specs(num_train_videos=5, num_test_groups=NUM_GROUPS, seed=3)
    assert [s for s in fewer if s.split == "test"] == [s for s in specs if s.split == "test"]


def test_counts_ids_and_variety(specs):
    train = [s for s in specs if s.split == "train"]
    test = [s for s in specs if s.split == "test"]
    assert len(train) == 300 and len(test) == NUM_GROUPS * 8
    assert len({s.video_id for s in specs}) == len(specs)
    assert train[42].video_id == "train-00042" and train[42].group == "" == train[42].corner
    assert "test-g0007-101" in {s.video_id for s in test}
    for pool in (train, test):
        assert {s.kind for s in pool} == set(syn.KINDS)
        assert {len(s.objects) for s in pool} == {1, 2, 3}
        assert {s.background for s in pool} == set(syn.BACKGROUNDS)
        objects = [o for s in pool for o in s.objects]
        assert {o.shape for o in objects} == set(syn.SHAPES)
        assert {o.colour for o in objects} == set(syn.COLOURS)
        assert {o.size for o in objects} == set(syn.SIZES)
        assert {o.role for o in objects} == {"mover", "still", "leaves", "arrives", "changes"}


def test_default_size_has_capacity():
    specs = syn.make_benchmark_specs(num_train_videos=0, num_test_groups=64, seed=0)
    assert len(specs) == 512
    assert len({s.content for s in specs}) == 512


def test_cube_structure(specs):
    groups = _test_groups(specs)
    assert len(groups) == NUM_GROUPS
    for gi, (gid, members) in enumerate(sorted(groups.items())):
        kind = syn.KINDS[gi % 2]
        assert sorted(members) == [f"{i:03b}" for i in range(8)], gid
        assert {m.kind for m in members.values()} == {kind}
        assert len({(m.seed, m.background) for m in members.values()}) == 1, "shared look"
        for corner, spec in members.items():
            for i, factor in enumerate(syn.CUBE_FACTORS[kind]):
                twin = members[syn.twin_corner(corner, i)]
                assert syn.single_factor_difference(spec, twin) == factor, (gid, corner)


def test_every_test_video_has_three_one_factor_near_duplicates(specs):
    """Checked over the whole test set, not trusting the group labels."""
    test = [s for s in specs if s.split == "test"]
    by_kind = defaultdict(list)
    for s in test:
        by_kind[s.kind].append(s)
    for spec in test:
        found = Counter(
            syn.single_factor_difference(spec, other) for other in by_kind[spec.kind]
        )
        for factor in syn.CUBE_FACTORS[spec.kind]:
            assert found[factor] >= 1, (spec.video_id, factor)
        assert sum(found[f] for f in syn.FACTORS) >= 3


def test_single_factor_difference_rejects_other_changes(specs):
    spec = next(s for s in specs if s.split == "test" and s.kind == "motion")
    mover = spec.objects[0]
    two = (replace(mover, colour=next(c for c in syn.COLOURS if c != mover.colour),
                   direction=syn.REVERSE[mover.direction]), *spec.objects[1:])
    assert syn.single_factor_difference(spec, replace(spec, objects=two)) is None
    shape = (replace(mover, shape=next(s for s in syn.SHAPES if s != mover.shape)),
             *spec.objects[1:])
    assert syn.single_factor_difference(spec, replace(spec, objects=shape)) is None
    assert syn.single_factor_difference(spec, spec) is None


def test_test_scenes_distinct_and_train_disjoint_on_request():
    specs = syn.make_benchmark_specs(300, 20, seed=3, train_scenes="disjoint")
    test = [s.content for s in specs if s.split == "test"]
    assert len(set(test)) == len(test)
    assert not {s.content for s in specs if s.split == "train"} & set(test)


def test_validation_cubes_look_like_the_test_and_share_no_scene():
    """num_val_groups adds cubes of split val: the test set stays exactly as it was, no
    validation scene is a test or (disjoint) training scene, and their captions name twins
    as the test's do, with a style per group."""
    plain = syn.make_benchmark_specs(300, 20, seed=3, train_scenes="disjoint")
    specs = syn.make_benchmark_specs(300, 20, seed=3, train_scenes="disjoint",
                                     num_val_groups=6)
    by_split = {split: [s for s in specs if s.split == split] for split in syn.SPLITS}
    assert by_split["test"] == [s for s in plain if s.split == "test"]
    assert len(by_split["val"]) == 6 * 8 and len(by_split["train"]) == 300
    assert [s.video_id for s in by_split["val"][:2]] == ["val-g0000-000", "val-g0000-001"]
    val = {s.content for s in by_split["val"]}
    assert len(val) == 6 * 8
    assert not val & {s.content for s in by_split["test"]}
    assert not val & {s.content for s in by_split["train"]}
    assert not {s.seed for s in by_split["train"]} & {s.seed for s in by_split["val"]}
    for group in {s.group for s in by_split["val"]}:
        members = {s.corner: s for s in by_split["val"] if s.group == group}
        for corner, spec in members.items():
            for i, factor in enumerate(syn.CUBE_FACTORS[spec.kind]):
                twin = members[syn.twin_corner(corner, i)]
                assert syn.single_factor_difference(spec, twin) == factor
    rows = syn.caption_rows(specs, captions_per_train_video=1, seed=0)
    val_rows = [r for r in rows if r["split"] == "val"]
    assert len(val_rows) == 48
    assert all(r[f"twin_{f}"].startswith("videos/val/") for r in val_rows
               for f in syn.CUBE_FACTORS[r["variant"]])
    assert [r for r in rows if r["split"] == "test"] == [
        r for r in syn.caption_rows(plain, 1, seed=0) if r["split"] == "test"]
    with pytest.raises(ValueError, match="num_val_groups must be >= 0"):
        syn.make_benchmark_specs(1, 1, num_val_groups=-1)


def test_shared_train_scenes_recur_but_never_as_the_same_video(specs):
    test = [s for s in specs if s.split == "test"]
    train = [s for s in specs if s.split == "train"]
    recurring = [s for s in train if s.content in {t.content for t in test}]
    # half of the 300 training videos re-show distinct test scenes (a fresh random scene may
    # also happen to match one)
    assert len({s.content for s in recurring}) >= 150
    assert not {s.seed for s in train} & {s.seed for s in test}  # never the same video
    with pytest.raises(ValueError, match="train_scenes"):
        syn.make_benchmark_specs(1, 1, train_scenes="both")


def test_spec_validation_and_json_round_trip(specs):
    for spec in specs[:50] + specs[-50:]:
        assert syn.spec_from_json(syn.spec_to_json(spec)) == spec
    good = specs[-1]
    with pytest.raises(ValueError, match="background 'neon'"):
        replace(good, background="neon")
    mover = syn.SceneObject("circle", "red", "small", "left", "mover", "right")
    with pytest.raises(ValueError, match="band 'left' does not fit right motion"):
        syn.VideoSpec("x", "train", "motion", "", "", (mover,), "dark", 0)
    still = syn.SceneObject("circle", "red", "small", "centre", "still")
    with pytest.raises(ValueError, match="needs an object that leaves"):
        syn.VideoSpec("x", "train", "events", "", "", (still,), "dark", 0)


# --------------------------------------------------------------------------- captions


def test_captions_are_deterministic_distinct_and_varied(specs):
    train = [s for s in specs if s.split == "train"]
    for spec in train[:40]:
        caps = syn.captions_for(spec, 3, seed=0)
        assert caps == syn.captions_for(spec, 3, seed=0)
        assert len(set(caps)) == 3
    rows = syn.caption_rows(specs, captions_per_train_video=3, seed=0)
    texts = [r["caption"] for r in rows]
    assert len(set(texts)) > 0.95 * len(texts)
    # Paraphrase variety: many different sentence frames once the content words are masked.
    content = set(syn.COLOURS) | POSITION_WORDS | FACTOR_WORDS["direction"]
    frames = {" ".join("_" if w.strip(",") in content else w for w in t.split()[:4])
              for t in texts}
    assert len(frames) > 100
    for template in (*grammar.MOTION_TEMPLATES, *grammar.THEN_TEMPLATES):
        opening = template.split("{")[0].strip()
        if opening:
            assert any(t.startswith(opening) or f" {opening}" in t for t in texts), template


def test_caption_examples():
    mover = syn.SceneObject("circle", "red", "small", "top", "mover", "left")
    motion = syn.VideoSpec("x", "train", "motion", "", "", (mover,), "dark", 0)
    zeros = (0,) * grammar.STYLE_LENGTH
    assert syn.caption(motion, zeros) == "a small red circle moves left along the top"
    style = (1, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0)
    assert syn.caption(motion, style) == (
        "along the top, a little red circle moves to the left on a dark background"
    )
    then = syn.VideoSpec("y", "train", "events", "", "", (
        syn.SceneObject("square", "blue", "large", "bottom right", "arrives"),
        syn.SceneObject("circle", "red", "small", "top left", "leaves"),
        syn.SceneObject("ring", "green", "small", "centre", "still"),
    ), "grey", 0)
    assert syn.caption(then, zeros) == (
        "a small red circle appears in the top left, then a large blue square appears in the "
        "bottom right, while a small green ring sits in the centre"
    )
    change = syn.VideoSpec("z", "train", "events", "", "", (
        syn.SceneObject("ring", "green", "small", "centre", "changes", colour_after="pink"),
    ), "grey", 0)
    assert syn.caption(change, zeros) == "a small ring in the centre turns from green to pink"
    with pytest.raises(ValueError, match="style"):
        syn.caption(change, (0, 1))


def test_near_duplicate_captions_differ_only_in_factor_words(specs):
    rng = np.random.default_rng(0)
    for members in _test_groups(specs).values():
        for style in [syn.draw_style(rng) for _ in range(4)]:
            for corner, spec in members.items():
                text = syn.caption(spec, style)
                for i, factor in enumerate(syn.CUBE_FACTORS[spec.kind]):
                    other = syn.caption(members[syn.twin_corner(corner, i)], style)
                    assert other != text
                    if factor == "order" and _words(other) == _words(text):
                        continue  # A then B <-> B then A, red to blue <-> blue to red
                    assert _changed_words(text, other) <= FACTOR_WORDS[factor], (text, other)


def test_test_captions_share_a_style_per_group(specs):
    for members in _test_groups(specs).values():
        captions = {c: syn.captions_for(s, 2, seed=5) for c, s in members.items()}
        for corner, (first, second) in captions.items():
            spec = members[corner]
            for i, factor in enumerate(syn.CUBE_FACTORS[spec.kind]):
                twin_first, twin_second = captions[syn.twin_corner(corner, i)]
                for a, b in ((first, twin_first), (second, twin_second)):
                    if factor == "order" and _words(a) == _words(b):
                        continue
                    assert _changed_words(a, b) <= FACTOR_WORDS[factor], (a, b)


def test_caption_rows_and_jsonl(specs, tmp_path):
    rows = syn.caption_rows(specs, captions_per_train_video=3, seed=0)
    assert len(rows) == 300 * 3 + NUM_GROUPS * 8
    assert rows == syn.caption_rows(specs, captions_per_train_video=3, seed=0)
    path = tmp_path / "sub" / "captions.jsonl"
    syn.write_captions_file(rows, path)
    assert [p.name for p in path.parent.iterdir()] == ["captions.jsonl"]
    back = [json.loads(line) for line in path.read_text().splitlines()]
    assert back == rows
    videos = {r["video"] for r in back}
    for row in back:
        assert row["video"] == f"videos/{row['split']}/{Path(row['video']).name}"
        assert row["variant"] in syn.KINDS
        if row["split"] == "test":
            twins = {k for k in row if k.startswith("twin_")}
            factors = syn.CUBE_FACTORS[row["variant"]]
            assert twins == {f"twin_{f}" for f in factors}
            assert all(row[t] in videos and row[t] != row["video"] for t in twins)
    with pytest.raises(ValueError, match="row 0 lacks caption"):
        syn.write_captions_file([{"video": "v", "split": "train"}], path)
    with pytest.raises(ValueError, match="no colour near-duplicate"):
        syn.caption_rows([s for s in specs if s.corner != "100"], 1, seed=0)


def test_near_duplicate_accuracy():
    metas = [{"twin_colour": "videos/test/b.mp4", "twin_order": "videos/test/c.mp4"},
             {"twin_colour": "videos/test/a.mp4"}, {}]
    ids = ["videos/test/a", "videos/test/b", "videos/test/c"]
    sim = np.array([[0.9, 0.1, 0.95], [0.2, 0.3, 0.0], [0.0, 0.0, 1.0]])
    acc = syn.near_duplicate_accuracy(sim, [0, 1, 2], ids, metas)
    assert acc == {"colour": 100.0, "order": 0.0}
    with pytest.raises(ValueError, match="not among the videos"):
        syn.near_duplicate_accuracy(sim, [0, 1, 2], ids[:2] + ["x"], metas)
    with pytest.raises(ValueError, match="does not fit"):
        syn.near_duplicate_accuracy(sim[:2], [0, 1, 2], ids, metas)


def test_paired_twin_changes_count_the_captions_that_changed():
    """Caption by caption: gained = won only after, lost = won only before; the accuracies'
    difference is (gained - lost) over the captions with that twin."""
    metas = [{"twin_colour": "videos/test/b.mp4"}, {"twin_colour": "videos/test/a.mp4"},
             {"twin_colour": "videos/test/a.mp4"}]
    ids = ["videos/test/a", "videos/test/b", "videos/test/c"]
    before = np.array([[0.9, 0.1, 0.0], [0.5, 0.3, 0.0], [0.5, 0.5, 0.4]])
    after = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.0], [0.5, 0.5, 0.6]])
    outcomes = [syn.near_duplicate_outcomes(m, [0, 1, 2], ids, metas) for m in (before, after)]
    assert outcomes[0] == {"colour": {0: True, 1: False, 2: False}}
    assert outcomes[1] == {"colour": {0: True, 1: True, 2: True}}
    assert syn.paired_twin_changes(*outcomes) == {"colour": (2, 0)}
    assert syn.paired_twin_changes(outcomes[1], outcomes[0]) == {"colour": (0, 2)}
    accuracy = [syn.near_duplicate_accuracy(m, [0, 1, 2], ids, metas)["colour"]
                for m in (before, after)]
    assert accuracy[1] - accuracy[0] == pytest.approx(100.0 * 2 / 3)
    with pytest.raises(ValueError, match="not the same captions"):
        syn.paired_twin_changes(outcomes[0], {"colour": {0: True}})


# --------------------------------------------------------------------------- frames


def test_frames_shape_and_determinism(specs):
    for spec in (specs[0], specs[-1]):
        frames = syn.render_frames(spec, frame_size=64, num_frames=16)
        assert frames.shape == (16, 64, 64, 3) and frames.dtype == np.uint8
        assert np.array_equal(frames, syn.render_frames(spec, 64, 16))
        assert syn.render_frames(spec, 224, 12).shape == (12, 224, 224, 3)
    with pytest.raises(ValueError, match="frame_size must be even"):
        syn.render_frames(specs[0], frame_size=63)


def test_motion_moves_in_its_direction():
    mover = syn.SceneObject("square", "blue", "large", "top", "mover", "right")
    still = syn.SceneObject("circle", "red", "small", "bottom left", "still")
    spec = syn.VideoSpec("m", "train", "motion", "", "", (mover, still), "grey", 1)
    frames = syn.render_frames(spec, 64, 8)
    blue = np.all(frames == syn.COLOURS["blue"], axis=-1)
    red = np.all(frames == syn.COLOURS["red"], axis=-1)
    xs = [np.nonzero(blue[t])[1].mean() for t in range(8)]
    ys = [np.nonzero(blue[t])[0].mean() for t in range(8)]
    assert np.all(np.diff(xs) > 0)
    assert max(ys) < 64 / 3 and max(ys) - min(ys) < 1e-9
    assert all(red[t].sum() == red[0].sum() > 0 for t in range(8))
    assert np.nonzero(red[0])[0].mean() > 2 * 64 / 3  # bottom row


def test_events_show_each_half():
    spec = syn.VideoSpec("e", "train", "events", "", "", (
        syn.SceneObject("square", "blue", "large", "bottom right", "arrives"),
        syn.SceneObject("circle", "red", "large", "top left", "leaves"),
        syn.SceneObject("ring", "green", "large", "centre", "changes", colour_after="yellow"),
    ), "dark", 2)
    frames = syn.render_frames(spec, 64, 9)
    present = {c: np.all(frames == syn.COLOURS[c], axis=-1).any(axis=(1, 2))
               for c in ("blue", "red", "green", "yellow")}
    assert present["red"].tolist() == [True] * 4 + [False] * 5
    assert present["blue"].tolist() == [False] * 5 + [True] * 4
    assert present["green"].tolist() == [True] * 4 + [False] * 5
    assert present["yellow"].tolist() == [False] * 5 + [True] * 4


def test_direction_reversal_reverses_frames_and_order_swap_keeps_multiset(specs):
    def multiset(frames: np.ndarray) -> Counter:
        return Counter(f.tobytes() for f in frames)

    for members in list(_test_groups(specs).values())[:16]:
        for corner, spec in members.items():
            if corner[2] == "1":
                continue
            twin = members[syn.twin_corner(corner, 2)]
            for size, count in ((64, 16), (32, 7)):
                a, b = syn.render_frames(spec, size, count), syn.render_frames(twin, size, count)
                assert not np.array_equal(a, b)
                if spec.kind == "motion":
                    assert np.array_equal(a[::-1], b)
                else:
                    assert multiset(a) == multiset(b)


def test_shapes_are_distinct_masks():
    masks = {s: shape_mask(s, 16) for s in syn.SHAPES}
    assert all(m.any() and not m.all() for m in masks.values())
    assert len({m.tobytes() for m in masks.values()}) == len(syn.SHAPES)
    with pytest.raises(ValueError, match="unknown shape"):
        shape_mask("star", 16)


# --------------------------------------------------------------------------- files


def test_render_video_writes_real_mp4(specs, tmp_path):
    spec = next(s for s in specs if s.split == "test" and s.kind == "events")
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

    mtime = path.stat().st_mtime_ns
    assert syn.render_video(spec, tmp_path, 64, 16, 8) == rel
    assert path.stat().st_mtime_ns == mtime, "an existing clip is not re-encoded"


def test_batch_encode_cuts_one_mp4_per_clip(specs, tmp_path):
    batch = [s for s in specs if s.split == "test"][:6] + specs[:4]
    rels = syn.render_videos(batch, tmp_path, frame_size=32, num_frames=12, fps=8)
    assert rels == [f"videos/{s.split}/{s.video_id}.mp4" for s in batch]
    for spec, rel in zip(batch, rels, strict=True):
        decoded = _decode(tmp_path / rel)
        rendered = syn.render_frames(spec, 32, 12)
        assert decoded.shape == rendered.shape, rel
        assert np.abs(decoded.astype(int) - rendered.astype(int)).mean() < 6, rel
        # The largest object keeps its colour through yuv420p: nearest named colour wins.
        obj = max(spec.objects, key=lambda o: syn.SIZES[o.size])
        seen = rendered == syn.COLOURS[obj.colour]
        where = np.all(seen, axis=-1)
        if where.sum() >= 20:
            pixel = np.median(decoded[where].astype(int), axis=0)
            dists = {n: np.abs(pixel - np.array(c)).sum() for n, c in syn.COLOURS.items()}
            assert min(dists, key=dists.get) == obj.colour, rel
    assert not list(tmp_path.rglob("*.tmp*")) and not list(tmp_path.rglob(".encode-*"))
    # resume: delete one clip, only it is rendered again
    (tmp_path / rels[3]).unlink()
    before = {r: (tmp_path / r).stat().st_mtime_ns for r in rels if r != rels[3]}
    syn.render_videos(batch, tmp_path, frame_size=32, num_frames=12, fps=8)
    assert (tmp_path / rels[3]).is_file()
    assert before == {r: (tmp_path / r).stat().st_mtime_ns for r in before}


def test_encode_validates_and_cleans_up(tmp_path, monkeypatch):
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    target = tmp_path / "clip.mp4"
    syn.encode_mp4(frames, target, fps=4)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    with pytest.raises(ValueError, match="clip.mp4"):
        syn.encode_mp4(frames[..., :2], target, fps=4)
    with pytest.raises(ValueError, match="even"):
        syn.encode_mp4(np.zeros((4, 15, 16, 3), np.uint8), target, fps=4)
    with pytest.raises(ValueError, match="differs from the batch"):
        syn.encode_clips([frames, frames[:3]], [tmp_path / "a.mp4", tmp_path / "b.mp4"], 4)
    with pytest.raises(ValueError, match="1 clips for 2 paths"):
        syn.encode_clips([frames], [tmp_path / "a.mp4", tmp_path / "b.mp4"], 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
    # ffmpeg failing (here: an unknown x264 preset) names the clip and keeps ffmpeg's stderr.
    monkeypatch.setitem(render.X264_OPTIONS, "preset", "no-such-preset")
    with pytest.raises(RuntimeError, match="broken.mp4") as info:
        syn.encode_mp4(frames, tmp_path / "broken.mp4", fps=4)
    assert "preset" in str(info.value).lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
