"""Still frames with captions of what each frame shows: the data the embedded encoder learns from.

No pretrained weights can be fetched offline, and a random-init frozen encoder is blind: its
frame embedding barely moves with a small object's colour or place, and its text tokens do
not know which word they are. CLIP knows what a frame shows and nothing of time; these stills
teach the tiny encoder exactly that. Each still is one frame of a generated scene (the same
renderer as the benchmark videos: backgrounds, shapes, jitter), captioned with what is visible
in that frame: sizes, colours, shapes, the 3 x 3 region each object is in, and how many there
are. Words of time (moves, left-to-right, then, appears) are never said: the encoder learns no
temporal cue, which stays the re-ranker's job.

Scenes are drawn from their own random stream and any scene of the evaluated test set is
skipped (`excluded` contents), so pretraining never shows a test scene.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from crosstvr_core.synthetic.grammar import BACKGROUND_WORDS, SHAPE_WORDS, SIZE_WORDS
from crosstvr_core.synthetic.render import render_frames
from crosstvr_core.synthetic.scenes import (
    _LINE,
    BACKGROUNDS,
    BANDS,
    DIRECTIONS,
    KINDS,
    REGIONS,
    SIZES,
    SceneObject,
    VideoSpec,
    band_centre,
    random_scene,
)

COUNT_WORDS = ("one object", "two objects", "three objects")
# the frames a scene is rendered with; a still is one of them
_STILL_CLIP_FRAMES = 16


@dataclass(frozen=True)
class VisibleObject:
    """What one frame shows of an object: its look and the 3 x 3 region it is in."""

    shape: str
    colour: str
    size: str
    region: str


def _nearest_line(frac: float) -> int:
    return int(np.argmin([abs(frac - line) for line in _LINE]))


def _region_at(col: int, row: int) -> str:
    return next(name for name, cell in REGIONS.items() if cell == (col, row))


def visible_objects(spec: VideoSpec, frame: int, frame_size: int,
                    num_frames: int = _STILL_CLIP_FRAMES) -> list[VisibleObject]:
    """The objects frame `frame` of `spec` (rendered with `num_frames`) shows, and where."""
    half = num_frames // 2
    phase = 0 if frame < half else (1 if frame >= num_frames - half else None)
    shown = []
    for obj in spec.objects:
        if obj.role == "mover":
            axis, sign = DIRECTIONS[obj.direction]
            side = max(4, round(SIZES[obj.size] * frame_size))
            track = np.round(np.linspace(0, frame_size - side, num_frames))
            along = (track if sign > 0 else track[::-1])[frame]
            along_line = _nearest_line((along + side / 2) / frame_size)
            across_line = _nearest_line(band_centre(obj.place))
            col, row = (along_line, across_line) if axis == "x" else (across_line, along_line)
            shown.append(VisibleObject(obj.shape, obj.colour, obj.size, _region_at(col, row)))
            continue
        visible = {"still": True, "leaves": phase == 0, "arrives": phase == 1,
                   "changes": phase is not None}[obj.role]
        if not visible:
            continue
        colour = obj.colour_after if obj.role == "changes" and phase == 1 else obj.colour
        shown.append(VisibleObject(obj.shape, colour, obj.size, obj.place))
    return shown


def still_caption(objects: list[VisibleObject], background: str,
                  rng: np.random.Generator) -> str:
    """A caption naming every visible object (size, colour, shape, region) in random order,
    with the count and the background sometimes said."""
    if not objects:
        text = "nothing but the background"
    else:
        phrases = []
        for obj in (objects[i] for i in rng.permutation(len(objects))):
            size = SIZE_WORDS[obj.size][int(rng.integers(len(SIZE_WORDS[obj.size])))]
            shape = SHAPE_WORDS[obj.shape][int(rng.integers(len(SHAPE_WORDS[obj.shape])))]
            phrases.append(f"a {size} {obj.colour} {shape} in the {obj.region}")
        text = " and ".join(phrases)
        if rng.random() < 0.3:
            text = f"{COUNT_WORDS[len(objects) - 1]}: {text}"
    if rng.random() < 0.4:
        words = BACKGROUND_WORDS[background]
        text = f"{text} on a {words[int(rng.integers(len(words)))]} background"
    return text


def moved_object(spec: VideoSpec, frame: int, frame_size: int,
                 rng: np.random.Generator) -> VideoSpec | None:
    """`spec` with one object that frame `frame` shows moved elsewhere: a still (or an event
    object) to a region that no object of the scene takes, a mover to another band of its
    axis. None when the frame shows nothing or the object has nowhere free to go.

    Rendered with the same seed, the frame differs from the original only in that object's
    place, and so does its caption: the pair teaches where, which colour and shape alone never
    need (random captions are told apart by their colours)."""
    shown = visible_objects(spec, frame, frame_size)
    if not shown:
        return None
    taken = {o.region for o in shown} | {o.place for o in spec.objects if o.role != "mover"}
    looks = {(v.shape, v.colour) for v in shown}
    candidates = [i for i, o in enumerate(spec.objects)
                  if looks & {(o.shape, o.colour), (o.shape, o.colour_after)}]
    for i in (candidates[int(k)] for k in rng.permutation(len(candidates))):
        obj = spec.objects[i]
        if obj.role == "mover":
            free = [b for b in BANDS[DIRECTIONS[obj.direction][0]] if b != obj.place]
        else:
            free = [r for r in REGIONS if r not in taken]
        if free:
            place = free[int(rng.integers(len(free)))]
            objects = spec.objects[:i] + (replace(obj, place=place),) + spec.objects[i + 1:]
            return replace(spec, objects=objects)
    return None


def generate_stills(count: int, frame_size: int, seed: int,
                    excluded: frozenset = frozenset(),
                    moved_pairs: float = 0.0) -> Iterator[tuple[np.ndarray, str]]:
    """`count` (uint8 [S, S, 3] frame, caption) pairs from scenes drawn for pretraining only,
    two stills per scene, yielded one after the other: two frames of the scene, or (for a
    share `moved_pairs` of the scenes) one frame and the same frame with one object moved
    (`moved_object`).

    A scene whose content (VideoSpec.content) is in `excluded` (the test set's) is skipped,
    and so is a moved copy that would be one. Deterministic from `seed`.
    """
    if not 0.0 <= moved_pairs <= 1.0:
        raise ValueError(f"moved_pairs must be in [0, 1], got {moved_pairs}")
    rng = np.random.default_rng([seed, 31])
    # a stream of its own: moved_pairs=0 draws exactly the stills it drew before the option
    move_rng = np.random.default_rng([seed, 37])
    made = 0
    while made < count:
        kind = KINDS[int(rng.integers(len(KINDS)))]
        objects: tuple[SceneObject, ...] = random_scene(rng, kind)
        if (kind, frozenset(objects)) in excluded:
            continue
        background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
        spec = VideoSpec(f"still-{made:07d}", "train", kind, "", "", objects, background,
                         int(rng.integers(2**31 - 1)))
        frames = render_frames(spec, frame_size, _STILL_CLIP_FRAMES)
        # two frames per scene: two positions of a mover, or the phases of an events scene
        picked = [int(f) for f in rng.choice(_STILL_CLIP_FRAMES, size=2, replace=False)]
        stills = [(spec, frames, picked[0]), (spec, frames, picked[1])]
        if moved_pairs and move_rng.random() < moved_pairs:
            moved = moved_object(spec, picked[0], frame_size, move_rng)
            if moved is not None and moved.content not in excluded:
                moved_frames = render_frames(moved, frame_size, _STILL_CLIP_FRAMES)
                stills[1] = (moved, moved_frames, picked[0])
        for shown_spec, shown_frames, frame in stills:
            if made == count:
                break
            shown = visible_objects(shown_spec, frame, frame_size)
            yield shown_frames[frame].copy(), still_caption(shown, background, rng)
            made += 1
