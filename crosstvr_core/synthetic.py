"""The generated fine-grained video benchmark.

Rendered clips (real mp4, libx264 yuv420p, so decoding later takes the real path) whose
captions differ only in fine spatial or temporal details. Each test group is a base video plus
three near-duplicates that change exactly one factor (colour, position, direction/order), so
per-factor retrieval metrics show what a model can and cannot tell apart. Everything is
deterministic from a seed.

Two scene kinds:
  * "motion": one object crosses the frame left/right/up/down along a band;
    objects = ((shape, colour, band, direction),).
  * "order": object A alone in region RA for the first half, then object B alone in region RB;
    objects = ((shape_a, colour_a, region_a), (shape_b, colour_b, region_b)).

The members of a test group share the spec seed (background and noise), so a near-duplicate
differs from its base in the factor only: reversing a motion gives exactly the reversed frames,
swapping an order gives exactly the same frame multiset.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np
from PIL import Image, ImageDraw

SPLITS = ("train", "test")
KINDS = ("motion", "order")
VARIANTS = ("base", "colour", "position", "direction", "order")
SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 200, 40),
    "blue": (35, 70, 235),
    "yellow": (240, 225, 25),
}
# Direction -> (axis, +1 if the coordinate grows). Reversal flips the sign on the same axis.
DIRECTIONS: dict[str, tuple[str, int]] = {
    "right": ("x", 1),
    "left": ("x", -1),
    "down": ("y", 1),
    "up": ("y", -1),
}
REVERSE = {"left": "right", "right": "left", "up": "down", "down": "up"}
# Bands a motion can run along: horizontal motion uses row bands, vertical motion column bands.
# Values are the band centre as a fraction of the frame.
BANDS: dict[str, dict[str, float]] = {
    "x": {"top": 0.2, "middle": 0.5, "bottom": 0.8},
    "y": {"left": 0.2, "centre": 0.5, "right": 0.8},
}
# Region -> (x, y) centre as fractions of the frame.
REGIONS: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "centre": (0.5, 0.5),
}


@dataclass(frozen=True)
class VideoSpec:
    """What one benchmark video shows; `objects` and `seed` fully determine its frames."""

    video_id: str
    split: str
    kind: str
    group: str
    variant: str
    objects: tuple
    seed: int

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"VideoSpec {self.video_id!r}: split {self.split!r} not in {SPLITS}")
        if self.kind not in KINDS:
            raise ValueError(f"VideoSpec {self.video_id!r}: kind {self.kind!r} not in {KINDS}")
        if self.variant not in (*VARIANTS, ""):
            raise ValueError(f"VideoSpec {self.video_id!r}: unknown variant {self.variant!r}")
        want = 1 if self.kind == "motion" else 2
        if len(self.objects) != want:
            raise ValueError(
                f"VideoSpec {self.video_id!r}: a {self.kind} scene needs {want} object(s), "
                f"got {self.objects!r}"
            )

    @property
    def content(self) -> tuple:
        """What the video shows, without its name or noise: equal contents = same scene."""
        return (self.kind, self.objects)


# --------------------------------------------------------------------------- specs


@functools.lru_cache(maxsize=1)
def _motion_block_packing() -> tuple[tuple[int, int, int, int, int], ...]:
    """Six disjoint test groups covering one (shape, axis) block of 4 colours x 3 bands x 2 signs.

    A motion group uses 4 of the 144 motion scenes, so random packing runs out long before
    the 36 groups that fit; this exact cover (found once by backtracking) is relabelled per
    block instead. A group is (colour, other colour, band, other band, sign) as indices.
    """
    cells = [(c, b, d) for c in range(4) for b in range(3) for d in range(2)]
    candidates = [
        (
            g,
            frozenset(
                {(g[0], g[2], g[4]), (g[1], g[2], g[4]), (g[0], g[3], g[4]), (g[0], g[2], 1 - g[4])}
            ),
        )
        for g in itertools.product(range(4), range(4), range(3), range(3), range(2))
        if g[0] != g[1] and g[2] != g[3]
    ]

    def search(used: frozenset, chosen: list) -> list | None:
        free = [cell for cell in cells if cell not in used]
        if not free:
            return chosen
        for g, covered in candidates:
            if free[0] in covered and not covered & used:
                found = search(used | covered, [*chosen, g])
                if found is not None:
                    return found
        return None

    found = search(frozenset(), [])
    assert found is not None and len(found) == 6
    return tuple(found)


def _motion_groups(rng: np.random.Generator) -> list[dict[str, tuple]]:
    """All 36 disjoint motion groups, randomly relabelled and shuffled."""
    colours = list(COLOURS)
    groups = []
    for shape in SHAPES:
        for axis in ("x", "y"):
            bands = list(BANDS[axis])
            dirs = [d for d, (ax, _) in DIRECTIONS.items() if ax == axis]
            cperm = rng.permutation(len(colours))
            bperm = rng.permutation(len(bands))
            dperm = rng.permutation(2)
            for c, c2, b, b2, d in _motion_block_packing():
                col, col2 = colours[cperm[c]], colours[cperm[c2]]
                band, band2 = bands[bperm[b]], bands[bperm[b2]]
                direction = dirs[dperm[d]]
                groups.append(
                    {
                        "base": ((shape, col, band, direction),),
                        "colour": ((shape, col2, band, direction),),
                        "position": ((shape, col, band2, direction),),
                        "direction": ((shape, col, band, REVERSE[direction]),),
                    }
                )
    order = rng.permutation(len(groups))
    return [groups[i] for i in order]


def _all_contents(kind: str) -> list[tuple]:
    """Every distinct objects tuple of one scene kind (144 motion, 2640 order)."""
    if kind == "motion":
        return [
            ((s, c, band, d),)
            for s in SHAPES
            for c in COLOURS
            for d, (axis, _) in DIRECTIONS.items()
            for band in BANDS[axis]
        ]
    objs = [(s, c) for s in SHAPES for c in COLOURS]
    return [
        ((*a, ra), (*b, rb))
        for a, b in itertools.permutations(objs, 2)
        for ra, rb in itertools.permutations(REGIONS, 2)
    ]


def _pick(rng: np.random.Generator, options: list | tuple):
    return options[int(rng.integers(len(options)))]


def _order_group(rng: np.random.Generator) -> dict[str, tuple]:
    """One random order group: base, one colour changed, one region changed, A/B swapped."""
    objs = [(s, c) for s in SHAPES for c in COLOURS]
    a, b = (objs[i] for i in rng.choice(len(objs), size=2, replace=False))
    ra, rb = (list(REGIONS)[i] for i in rng.choice(len(REGIONS), size=2, replace=False))
    base = [(*a, ra), (*b, rb)]

    colour = [list(o) for o in base]
    i = int(rng.integers(2))
    other = base[1 - i]
    colour[i][1] = _pick(
        rng,
        [c for c in COLOURS if c != base[i][1] and (base[i][0], c) != (other[0], other[1])],
    )
    position = [list(o) for o in base]
    j = int(rng.integers(2))
    position[j][2] = _pick(rng, [r for r in REGIONS if r not in (ra, rb)])
    return {
        "base": tuple(base),
        "colour": tuple(tuple(o) for o in colour),
        "position": tuple(tuple(o) for o in position),
        "order": (base[1], base[0]),
    }


def make_benchmark_specs(
    num_train_videos: int, num_test_groups: int, seed: int = 0, train_scenes: str = "shared"
) -> list[VideoSpec]:
    """Train specs then test specs (group by group: base, colour, position, direction/order).

    Test groups alternate motion/order; every test scene is distinct. Train scenes are drawn
    uniformly (kind by a coin flip) from every scene ("shared": a test scene may recur in
    training with another background, noise and caption, as concepts recur between the
    splits of real datasets; the test videos themselves never do) or from the scenes no test
    video shows ("disjoint": compositional generalisation; only 24 motion scenes remain for
    training at 60 test groups), falling back to all scenes of a kind if none are left.
    """
    if train_scenes not in ("shared", "disjoint"):
        raise ValueError(f"train_scenes must be 'shared' or 'disjoint', got {train_scenes!r}")
    if num_train_videos < 0:
        raise ValueError(f"num_train_videos must be >= 0, got {num_train_videos}")
    if num_test_groups < 0:
        raise ValueError(f"num_test_groups must be >= 0, got {num_test_groups}")
    test_rng = np.random.default_rng([seed, 1])
    train_rng = np.random.default_rng([seed, 2])

    motion_groups = _motion_groups(test_rng)
    num_motion = (num_test_groups + 1) // 2
    if num_motion > len(motion_groups):
        raise ValueError(
            f"num_test_groups={num_test_groups} needs {num_motion} motion groups, but only "
            f"{len(motion_groups)} disjoint ones exist (max num_test_groups is "
            f"{2 * len(motion_groups)})"
        )
    used: set[tuple] = set()
    test: list[VideoSpec] = []
    for gi in range(num_test_groups):
        kind = KINDS[gi % 2]
        if kind == "motion":
            members = motion_groups[gi // 2]
        else:
            for _ in range(10_000):
                members = _order_group(test_rng)
                if not any(("order", objs) in used for objs in members.values()):
                    break
            else:
                raise ValueError(f"could not draw a distinct order group g{gi:04d}")
        group_seed = int(test_rng.integers(2**31 - 1))
        group = f"g{gi:04d}"
        for variant, objects in members.items():
            used.add((kind, objects))
            test.append(
                VideoSpec(
                    f"test-{group}-{variant}", "test", kind, group, variant, objects, group_seed
                )
            )

    pools = {}
    for kind in KINDS:
        every = _all_contents(kind)
        free = [objs for objs in every if (kind, objs) not in used]
        pools[kind] = (free or every) if train_scenes == "disjoint" else every
    train = []
    for i in range(num_train_videos):
        kind = KINDS[int(train_rng.integers(2))]
        objects = _pick(train_rng, pools[kind])
        train.append(
            VideoSpec(
                f"train-{i:05d}", "train", kind, "", "", objects, int(train_rng.integers(2**31 - 1))
            )
        )
    return train + test


# --------------------------------------------------------------------------- frames


@functools.lru_cache(maxsize=64)
def _shape_mask(shape: str, size: int) -> np.ndarray:
    """Binary [size, size] mask of a shape (no anti-aliasing: colours stay pure)."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    last = size - 1
    if shape == "circle":
        draw.ellipse([0, 0, last, last], fill=255)
    elif shape == "square":
        inset = max(1, size // 10)
        draw.rectangle([inset, inset, last - inset, last - inset], fill=255)
    elif shape == "triangle":
        draw.polygon([(last / 2, 0), (0, last), (last, last)], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    mask = np.asarray(img) > 127
    mask.setflags(write=False)
    return mask


def _background(seed: int, size: int) -> np.ndarray:
    """A muted plain colour plus mild static noise, from the spec seed."""
    rng = np.random.default_rng([seed, 7])
    grey = int(rng.integers(60, 120))
    tint = rng.integers(-15, 16, size=3)
    noise = np.round(rng.normal(0.0, 3.0, size=(size, size, 3)))
    return np.clip(grey + tint + noise, 0, 255).astype(np.uint8)


def _offset(frac: float, frame_size: int, obj: int) -> int:
    """Top-left coordinate that centres an object of `obj` px at `frac` of the frame."""
    return int(np.clip(round(frac * frame_size - obj / 2), 0, frame_size - obj))


def _paste(frame: np.ndarray, shape: str, colour: str, x: int, y: int, obj: int) -> None:
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {tuple(COLOURS)}")
    frame[y : y + obj, x : x + obj][_shape_mask(shape, obj)] = COLOURS[colour]


def render_frames(spec: VideoSpec, frame_size: int = 64, num_frames: int = 16) -> np.ndarray:
    """The clip of `spec` as uint8 [T, H, W, 3] RGB; objects are ~frame_size/4 px."""
    if frame_size < 16 or frame_size % 2:
        raise ValueError(f"{spec.video_id}: frame_size must be even and >= 16, got {frame_size}")
    if num_frames < 2:
        raise ValueError(f"{spec.video_id}: num_frames must be >= 2, got {num_frames}")
    obj = frame_size // 4
    frames = np.repeat(_background(spec.seed, frame_size)[None], num_frames, axis=0)
    if spec.kind == "motion":
        ((shape, colour, band, direction),) = spec.objects
        axis, sign = DIRECTIONS[direction]
        if band not in BANDS[axis]:
            raise ValueError(
                f"{spec.video_id}: band {band!r} does not fit {direction} motion; "
                f"expected one of {tuple(BANDS[axis])}"
            )
        # One increasing track, reversed for the opposite sign: reversal is exact.
        track = np.round(np.linspace(0, frame_size - obj, num_frames)).astype(int)
        if sign < 0:
            track = track[::-1]
        across = _offset(BANDS[axis][band], frame_size, obj)
        for t in range(num_frames):
            x, y = (int(track[t]), across) if axis == "x" else (across, int(track[t]))
            _paste(frames[t], shape, colour, x, y, obj)
    else:
        half = num_frames // 2  # an odd clip keeps a background-only middle frame
        for (shape, colour, region), ts in zip(
            spec.objects, (range(half), range(num_frames - half, num_frames)), strict=True
        ):
            if region not in REGIONS:
                raise ValueError(f"{spec.video_id}: unknown region {region!r}")
            fx, fy = REGIONS[region]
            x, y = _offset(fx, frame_size, obj), _offset(fy, frame_size, obj)
            for t in ts:
                _paste(frames[t], shape, colour, x, y, obj)
    return frames


# --------------------------------------------------------------------------- captions

_MOTION_TEMPLATES = (
    "a {colour} {shape} moves {dir} along {band}",
    "along {band} of the frame, a {colour} {shape} is moving {dir_to}",
    "there is a {colour} {shape} travelling {dir_wards} at {band}",
    "a {colour} {shape} slides {dir} across {band} of the frame",
    "at {band}, a {colour} {shape} goes {dir_to}",
)
_ORDER_TEMPLATES = (
    "a {colour_a} {shape_a} appears in {region_a}, then a {colour_b} {shape_b} appears in "
    "{region_b}",
    "first a {colour_a} {shape_a} in {region_a}, then a {colour_b} {shape_b} in {region_b}",
    "a {colour_a} {shape_a} appears in {region_a}, followed by a {colour_b} {shape_b} in "
    "{region_b}",
    "a {colour_b} {shape_b} shows up in {region_b} after a {colour_a} {shape_a} in {region_a}",
    "the video shows a {colour_a} {shape_a} in {region_a} and then a {colour_b} {shape_b} in "
    "{region_b}",
)
_DIR_TO = {"left": "to the left", "right": "to the right", "up": "upwards", "down": "downwards"}
_DIR_WARDS = {"left": "leftwards", "right": "rightwards", "up": "upwards", "down": "downwards"}
_BAND_PHRASE = {
    "top": "the top",
    "middle": "the middle",
    "bottom": "the bottom",
    "left": "the left side",
    "centre": "the centre",
    "right": "the right side",
}


def num_paraphrases(kind: str) -> int:
    """How many caption templates a scene kind has."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    return len(_MOTION_TEMPLATES if kind == "motion" else _ORDER_TEMPLATES)


def paraphrase(spec: VideoSpec, index: int) -> str:
    """The caption of `spec` from template `index` (mod the number of templates)."""
    if spec.kind == "motion":
        ((shape, colour, band, direction),) = spec.objects
        template = _MOTION_TEMPLATES[index % len(_MOTION_TEMPLATES)]
        return template.format(
            colour=colour,
            shape=shape,
            dir=direction,
            dir_to=_DIR_TO[direction],
            dir_wards=_DIR_WARDS[direction],
            band=_BAND_PHRASE[band],
        )
    (shape_a, colour_a, region_a), (shape_b, colour_b, region_b) = spec.objects
    template = _ORDER_TEMPLATES[index % len(_ORDER_TEMPLATES)]
    return template.format(
        colour_a=colour_a,
        shape_a=shape_a,
        region_a=f"the {region_a}",
        colour_b=colour_b,
        shape_b=shape_b,
        region_b=f"the {region_b}",
    )


def captions_for(spec: VideoSpec, count: int, seed: int) -> list[str]:
    """`count` paraphrases, distinct while templates last, deterministic from `seed`.

    Test videos choose templates by group, so a near-duplicate's caption differs from its
    base's only in the changed factor's words (the fine-grained contrast the benchmark
    measures); train videos choose per video.
    """
    if count < 1:
        raise ValueError(f"{spec.video_id}: caption count must be >= 1, got {count}")
    key = f"{spec.split}:{spec.group}" if spec.split == "test" else spec.video_id
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    n = num_paraphrases(spec.kind)
    order = rng.permutation(n)
    return [paraphrase(spec, int(order[i % n])) for i in range(count)]


def video_relpath(spec: VideoSpec) -> str:
    """Where a spec's clip lives, relative to the dataset root."""
    return f"videos/{spec.split}/{spec.video_id}.mp4"


def caption_rows(specs: list[VideoSpec], captions_per_train_video: int, seed: int) -> list[dict]:
    """Captions table rows (video, caption, split, group, variant); test videos get one."""
    rows = []
    for spec in specs:
        count = captions_per_train_video if spec.split == "train" else 1
        for caption in captions_for(spec, count, seed):
            rows.append(
                {
                    "video": video_relpath(spec),
                    "caption": caption,
                    "split": spec.split,
                    "group": spec.group,
                    "variant": spec.variant,
                }
            )
    return rows


# --------------------------------------------------------------------------- files


def _tmp_sibling(path: Path, suffix: str) -> Path:
    """A unique temp name next to `path` (same filesystem, so os.replace is atomic)."""
    return path.with_name(f"{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}")


def encode_mp4(frames: np.ndarray, path: str | Path, fps: int) -> None:
    """Encode uint8 [T, H, W, 3] RGB frames to an H.264 yuv420p mp4 at `path`, atomically."""
    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"encode_mp4({path}): frames must be uint8 [T, H, W, 3], "
            f"got {frames.dtype} {frames.shape}"
        )
    t, h, w, _ = frames.shape
    if t < 1 or h % 2 or w % 2:
        raise ValueError(f"encode_mp4({path}): need >= 1 frame and even H, W; got {frames.shape}")
    if fps < 1:
        raise ValueError(f"encode_mp4({path}): fps must be >= 1, got {fps}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path, ".mp4")
    stream = (
        ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", framerate=fps)
        .output(
            str(tmp),
            vcodec="libx264",
            pix_fmt="yuv420p",
            crf=18,
            preset="veryfast",
            threads=1,
            movflags="+faststart",
            loglevel="error",
        )
        .overwrite_output()
    )
    try:
        stream.run(
            input=np.ascontiguousarray(frames).tobytes(), capture_stdout=True, capture_stderr=True
        )
        os.replace(tmp, path)
    except ffmpeg.Error as exc:
        tail = (exc.stderr or b"").decode(errors="replace")[-2000:]
        raise RuntimeError(f"ffmpeg failed to encode {path}: {tail.strip()}") from exc
    except FileNotFoundError as exc:
        if exc.filename in (None, "ffmpeg"):
            raise RuntimeError(f"cannot encode {path}: the ffmpeg binary is not on PATH") from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def render_video(
    spec: VideoSpec, root: str | Path, frame_size: int, num_frames: int, fps: int
) -> str:
    """Render and encode `spec` under `root` unless already there; returns the relative path."""
    rel = video_relpath(spec)
    path = Path(root) / rel
    if path.is_file() and path.stat().st_size > 0:
        return rel
    encode_mp4(render_frames(spec, frame_size, num_frames), path, fps)
    return rel


def write_captions_file(rows: list[dict], path: str | Path) -> None:
    """Write caption rows as JSONL atomically (temp file + os.replace)."""
    path = Path(path)
    for i, row in enumerate(rows):
        missing = [k for k in ("video", "caption", "split") if k not in row]
        if missing:
            raise ValueError(f"write_captions_file({path}): row {i} lacks {', '.join(missing)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path, path.suffix or ".jsonl")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
