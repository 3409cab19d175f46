"""What the generated benchmark's videos show: the vocabulary, scene specs and test cubes.

A test group is a cube of three binary one-factor swaps (2 x 2 x 2 = 8 videos): colour x
position x direction for "motion" scenes, colour x position x order for "events" scenes. Every
test video therefore has exactly three near-duplicates in its group, one per factor, which a
retriever must tell apart from the caption alone. The members of a cube share their seed and
background, so a near-duplicate differs from its neighbour in that factor only: a reversed
motion gives exactly the reversed frames, an order swap exactly the same frame multiset.

Scene kinds (1 to 3 objects each):
  * "motion": one mover crosses the frame along a band (left/right along a row, up/down along
    a column), 0-2 still objects sit in regions off its path.
  * "events": the clip has two halves; objects "leave" (first half only), "arrive" (second
    half only), "change" colour between the halves, or stay "still". Patterns: A then B
    (A leaves, B arrives), one object appears or disappears, one object changes colour.
    The order swap exchanges the halves (leave <-> arrive, red->blue <-> blue->red).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, replace

import numpy as np

SPLITS = ("train", "val", "test")
CUBE_SPLITS = ("val", "test")  # splits drawn cube by cube, with one-factor near-duplicates
KINDS = ("motion", "events")
# The three binary swaps of a test cube, per kind; a member's corner is one bit per factor.
CUBE_FACTORS: dict[str, tuple[str, str, str]] = {
    "motion": ("colour", "position", "direction"),
    "events": ("colour", "position", "order"),
}
FACTORS = ("colour", "position", "direction", "order")
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 200, 40),
    "blue": (35, 70, 235),
    "yellow": (240, 225, 25),
    "purple": (140, 40, 200),
    "orange": (250, 140, 20),
    "cyan": (30, 220, 230),
    "pink": (250, 130, 190),
}
# Object side as a fraction of the frame side.
SIZES: dict[str, float] = {"small": 1 / 6, "large": 1 / 4}
# Background name -> grey level range; the tint, gradient and noise come from the seed.
BACKGROUNDS: dict[str, tuple[int, int]] = {"dark": (25, 55), "grey": (90, 120), "light": (170, 200)}
# Direction -> (axis, +1 if the coordinate grows). Reversal flips the sign on the same axis.
DIRECTIONS: dict[str, tuple[str, int]] = {
    "right": ("x", 1),
    "left": ("x", -1),
    "down": ("y", 1),
    "up": ("y", -1),
}
REVERSE = {"left": "right", "right": "left", "up": "down", "down": "up"}
_LINE = (0.18, 0.5, 0.82)  # centres of the three rows / columns, as fractions of the frame
# Bands a mover runs along: horizontal motion along a row, vertical motion along a column.
BANDS: dict[str, dict[str, int]] = {
    "x": {"top": 0, "middle": 1, "bottom": 2},  # row index
    "y": {"left": 0, "centre": 1, "right": 2},  # column index
}
# Region (3 x 3 grid) -> (column, row).
REGIONS: dict[str, tuple[int, int]] = {
    f"{row} {col}" if (row, col) != ("middle", "centre") else "centre": (ci, ri)
    for ri, row in enumerate(("top", "middle", "bottom"))
    for ci, col in enumerate(("left", "centre", "right"))
}
ROLES = {
    "motion": ("mover", "still"),
    "events": ("still", "leaves", "arrives", "changes"),
}
_SWAP_ROLE = {"leaves": "arrives", "arrives": "leaves", "still": "still", "changes": "changes"}
MAX_OBJECTS = 3


def region_centre(region: str) -> tuple[float, float]:
    """(x, y) centre of a region as fractions of the frame."""
    col, row = REGIONS[region]
    return _LINE[col], _LINE[row]


def band_centre(band: str) -> float:
    """The across-motion coordinate of a band, as a fraction of the frame."""
    for axis_bands in BANDS.values():
        if band in axis_bands:
            return _LINE[axis_bands[band]]
    raise ValueError(f"unknown band {band!r}")


@dataclass(frozen=True)
class SceneObject:
    """One object: what it looks like, where it is and what it does over time.

    `place` is a band for the mover and a region otherwise; `direction` is set for the mover
    only, `colour_after` for a "changes" object only (its colour in the second half).
    """

    shape: str
    colour: str
    size: str
    place: str
    role: str
    direction: str = ""
    colour_after: str = ""

    def validate(self, kind: str, where: str) -> None:
        checks = (
            (self.shape in SHAPES, f"shape {self.shape!r} not in {SHAPES}"),
            (self.colour in COLOURS, f"colour {self.colour!r} not in {tuple(COLOURS)}"),
            (self.size in SIZES, f"size {self.size!r} not in {tuple(SIZES)}"),
            (self.role in ROLES[kind], f"role {self.role!r} not in {ROLES[kind]} ({kind})"),
        )
        for ok, problem in checks:
            if not ok:
                raise ValueError(f"{where}: {problem}")
        if self.role == "mover":
            if self.direction not in DIRECTIONS:
                raise ValueError(f"{where}: mover direction {self.direction!r} not in "
                                 f"{tuple(DIRECTIONS)}")
            axis = DIRECTIONS[self.direction][0]
            if self.place not in BANDS[axis]:
                raise ValueError(f"{where}: band {self.place!r} does not fit {self.direction} "
                                 f"motion; expected one of {tuple(BANDS[axis])}")
        else:
            if self.direction:
                raise ValueError(f"{where}: only the mover has a direction")
            if self.place not in REGIONS:
                raise ValueError(f"{where}: region {self.place!r} not in {tuple(REGIONS)}")
        if (self.role == "changes") != bool(self.colour_after):
            raise ValueError(f"{where}: colour_after is set exactly for a 'changes' object")
        if self.colour_after and self.colour_after not in (set(COLOURS) - {self.colour}):
            raise ValueError(f"{where}: colour_after {self.colour_after!r} must be another "
                             f"colour of {tuple(COLOURS)}")

    def phase_swapped(self) -> SceneObject:
        """The object with the clip's two halves exchanged (its part of an order swap)."""
        if self.role == "changes":
            return replace(self, colour=self.colour_after, colour_after=self.colour)
        return replace(self, role=_SWAP_ROLE.get(self.role, self.role))


@dataclass(frozen=True)
class VideoSpec:
    """One benchmark video; `objects`, `background` and `seed` fully determine its frames.

    `group` and `corner` place a validation or test video in its cube (`corner` is one bit
    per factor of CUBE_FACTORS[kind], e.g. "101"); both are "" for training videos.
    """

    video_id: str
    split: str
    kind: str
    group: str
    corner: str
    objects: tuple[SceneObject, ...]
    background: str
    seed: int

    def __post_init__(self) -> None:
        where = f"VideoSpec {self.video_id!r}"
        if self.split not in SPLITS:
            raise ValueError(f"{where}: split {self.split!r} not in {SPLITS}")
        if self.kind not in KINDS:
            raise ValueError(f"{where}: kind {self.kind!r} not in {KINDS}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"{where}: background {self.background!r} not in "
                             f"{tuple(BACKGROUNDS)}")
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"{where}: needs 1 to {MAX_OBJECTS} objects, got "
                             f"{len(self.objects)}")
        for i, obj in enumerate(self.objects):
            if not isinstance(obj, SceneObject):
                raise ValueError(f"{where}: object {i} is {type(obj).__name__}, not SceneObject")
            obj.validate(self.kind, f"{where} object {i}")
        roles = [o.role for o in self.objects]
        if self.kind == "motion" and roles.count("mover") != 1:
            raise ValueError(f"{where}: a motion scene needs exactly one mover, got {roles}")
        if self.kind == "events" and all(r == "still" for r in roles):
            raise ValueError(f"{where}: an events scene needs an object that leaves, arrives "
                             f"or changes, got {roles}")
        regions = [o.place for o in self.objects if o.role != "mover"]
        if len(set(regions)) != len(regions):
            raise ValueError(f"{where}: two objects share a region: {regions}")
        if self.corner and (len(self.corner) != 3 or set(self.corner) - {"0", "1"}):
            raise ValueError(f"{where}: corner must be 3 bits like '101', got {self.corner!r}")

    @property
    def content(self) -> tuple:
        """What the captions describe, without name, seed or background: equal = same scene."""
        return (self.kind, frozenset(self.objects))


def spec_to_json(spec: VideoSpec) -> str:
    return json.dumps(asdict(spec), sort_keys=True)


def spec_from_json(text: str) -> VideoSpec:
    fields = json.loads(text)
    fields["objects"] = tuple(SceneObject(**obj) for obj in fields["objects"])
    return VideoSpec(**fields)


# --------------------------------------------------------------------------- factors


def single_factor_difference(a: VideoSpec, b: VideoSpec) -> str | None:
    """The one factor (FACTORS) in which scene b differs from scene a, else None.

    Objects are compared position by position (cube members keep their order); any other
    difference (shape, size, stills, several factors, kind) gives None.
    """
    if a.kind != b.kind or len(a.objects) != len(b.objects) or a.objects == b.objects:
        return None
    if a.kind == "events" and tuple(o.phase_swapped() for o in a.objects) == b.objects:
        return "order"
    changed = [(x, y) for x, y in zip(a.objects, b.objects, strict=True) if x != y]
    if len(changed) != 1:
        return None
    (x, y), = changed
    fields = {k for k, v in asdict(x).items() if asdict(y)[k] != v}
    if fields == {"place"}:
        return "position"
    if fields in ({"colour"}, {"colour_after"}):
        return "colour"
    if fields == {"direction"} and REVERSE[x.direction] == y.direction:
        return "direction"
    return None


# --------------------------------------------------------------------------- scenes


def _pick(rng: np.random.Generator, options):
    options = list(options)
    return options[int(rng.integers(len(options)))]


def _look(rng: np.random.Generator) -> tuple[str, str, str]:
    return _pick(rng, SHAPES), _pick(rng, COLOURS), _pick(rng, SIZES)


def _stills(
    rng: np.random.Generator, regions: list[str], count: int, avoid: set[tuple[str, str]]
) -> list[SceneObject]:
    """`count` still objects in distinct `regions`, none looking like an `avoid` object."""
    chosen = rng.choice(len(regions), size=min(count, len(regions)), replace=False)
    stills = []
    for i in sorted(chosen):
        look = _look(rng)
        while (look[0], look[1]) in avoid:
            look = _look(rng)
        stills.append(SceneObject(*look, regions[int(i)], "still"))
    return stills


def _motion_cube(rng: np.random.Generator) -> tuple[list[SceneObject], dict[str, SceneObject]]:
    """A motion scene and the alternative mover for each factor of its cube."""
    direction = _pick(rng, DIRECTIONS)
    axis = DIRECTIONS[direction][0]
    band, alt_band = (list(BANDS[axis])[int(i)] for i in rng.choice(3, size=2, replace=False))
    shape, colour, size = _look(rng)
    alt_colour = _pick(rng, [c for c in COLOURS if c != colour])
    mover = SceneObject(shape, colour, size, band, "mover", direction)
    # Stills sit in the one row (column) that neither of the mover's bands crosses.
    free_line = ({0, 1, 2} - {BANDS[axis][band], BANDS[axis][alt_band]}).pop()
    free = [r for r, (c, w) in REGIONS.items() if (w if axis == "x" else c) == free_line]
    avoid = {(shape, colour), (shape, alt_colour)}
    objects = [mover, *_stills(rng, free, int(rng.integers(0, MAX_OBJECTS)), avoid)]
    alternatives = {
        "colour": replace(mover, colour=alt_colour),
        "position": replace(mover, place=alt_band),
        "direction": replace(mover, direction=REVERSE[direction]),
    }
    return objects, alternatives


def _events_cube(rng: np.random.Generator) -> tuple[list[SceneObject], dict[str, object]]:
    """An events scene, and for its colour and position factors: (object index, new value)."""
    pattern = _pick(rng, ("then", "single", "change"))
    regions = list(REGIONS)
    order = [regions[int(i)] for i in rng.permutation(len(regions))]
    if pattern == "then":
        a, b = _look(rng), _look(rng)
        while (a[0], a[1]) == (b[0], b[1]):
            b = _look(rng)
        events = [SceneObject(*a, order[0], "leaves"), SceneObject(*b, order[1], "arrives")]
    elif pattern == "single":
        events = [SceneObject(*_look(rng), order[0], _pick(rng, ("leaves", "arrives")))]
    else:
        shape, colour, size = _look(rng)
        after = _pick(rng, [c for c in COLOURS if c != colour])
        events = [SceneObject(shape, colour, size, order[0], "changes", colour_after=after)]
    alt_region = order[len(events)]
    ci, pi = int(rng.integers(len(events))), int(rng.integers(len(events)))
    target = events[ci]
    others = {(o.shape, o.colour) for o in events if o is not target}
    taken = {target.colour, target.colour_after}
    alt_colour = _pick(rng, [c for c in COLOURS if c not in taken and (target.shape, c) not in
                             others])
    avoid = {(o.shape, c) for o in events for c in (o.colour, o.colour_after, alt_colour)}
    count = int(rng.integers(0, MAX_OBJECTS - len(events) + 1))
    stills = _stills(rng, order[len(events) + 1 :], count, avoid)
    return [*events, *stills], {"colour": (ci, alt_colour), "position": (pi, alt_region)}


def _cube_members(kind: str, rng: np.random.Generator) -> dict[str, tuple[SceneObject, ...]]:
    """corner bits -> objects, for the 8 members of one cube."""
    members = {}
    if kind == "motion":
        objects, alt = _motion_cube(rng)
        for bits in itertools.product((0, 1), repeat=3):
            mover = objects[0]
            if bits[0]:
                mover = replace(mover, colour=alt["colour"].colour)
            if bits[1]:
                mover = replace(mover, place=alt["position"].place)
            if bits[2]:
                mover = replace(mover, direction=alt["direction"].direction)
            members["".join(map(str, bits))] = (mover, *objects[1:])
        return members
    objects, alt = _events_cube(rng)
    for bits in itertools.product((0, 1), repeat=3):
        objs = list(objects)
        if bits[0]:
            i, colour = alt["colour"]
            objs[i] = replace(objs[i], colour=colour)
        if bits[1]:
            i, region = alt["position"]
            objs[i] = replace(objs[i], place=region)
        if bits[2]:
            objs = [o.phase_swapped() for o in objs]
        members["".join(map(str, bits))] = tuple(objs)
    return members


def random_scene(rng: np.random.Generator, kind: str) -> tuple[SceneObject, ...]:
    """One scene of `kind`, drawn as a cube's reference corner (all corners are alike)."""
    return _cube_members(kind, rng)["000"]


def _draw_cubes(split: str, num_groups: int, rng: np.random.Generator, used: set[tuple]
                ) -> list[VideoSpec]:
    """`num_groups` cubes of `split` (kinds alternate), none sharing a scene with `used`,
    which grows by theirs."""
    specs: list[VideoSpec] = []
    for gi in range(num_groups):
        kind = KINDS[gi % 2]
        for _ in range(1000):
            members = _cube_members(kind, rng)
            contents = {(kind, frozenset(objs)) for objs in members.values()}
            if len(contents) == 8 and not contents & used:
                break
        else:
            raise ValueError(f"{split} groups: could not draw a distinct cube g{gi:04d} of "
                             f"{num_groups}; the scene space is exhausted")
        used |= contents
        group = f"g{gi:04d}"
        background = _pick(rng, BACKGROUNDS)
        group_seed = int(rng.integers(2**31 - 1))
        specs.extend(
            VideoSpec(f"{split}-{group}-{corner}", split, kind, group, corner, objs, background,
                      group_seed)
            for corner, objs in members.items()
        )
    return specs


def make_benchmark_specs(
    num_train_videos: int, num_test_groups: int, seed: int = 0, train_scenes: str = "shared",
    num_val_groups: int = 0,
) -> list[VideoSpec]:
    """Train specs, then validation and test specs cube by cube (8 per group, corners in
    binary order).

    Groups alternate motion/events; no two cube videos show the same scene (`content`). The
    test set depends on `seed` and `num_test_groups` only; the validation cubes, drawn after
    it from their own stream, share no scene with it, so they measure what the test measures
    without being the test. Training videos are fresh random scenes, except that with
    train_scenes="shared" up to half of them re-show test scenes (each test scene at most
    once, with another seed, so other noise, tint, jitter and captions: a scene layout
    recurs, a test video never does). "disjoint" keeps every test and validation scene out of
    training (compositional generalisation).
    """
    if train_scenes not in ("shared", "disjoint"):
        raise ValueError(f"train_scenes must be 'shared' or 'disjoint', got {train_scenes!r}")
    for name, value in (("num_train_videos", num_train_videos),
                        ("num_test_groups", num_test_groups), ("num_val_groups", num_val_groups)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    test_rng = np.random.default_rng([seed, 1])
    train_rng = np.random.default_rng([seed, 2])
    val_rng = np.random.default_rng([seed, 3])

    used: set[tuple] = set()
    test = _draw_cubes("test", num_test_groups, test_rng, used)
    val = _draw_cubes("val", num_val_groups, val_rng, used)

    test_seeds = {s.seed for s in (*test, *val)}
    recurring: list[VideoSpec] = []
    if train_scenes == "shared" and test:
        picks = train_rng.choice(len(test), size=min(num_train_videos // 2, len(test)),
                                 replace=False)
        recurring = [test[int(i)] for i in picks]
    slots = set(train_rng.choice(num_train_videos, size=len(recurring), replace=False).tolist())
    recurring_iter = iter(recurring)
    train = []
    for i in range(num_train_videos):
        video_seed = int(train_rng.integers(2**31 - 1))
        while video_seed in test_seeds:
            video_seed = int(train_rng.integers(2**31 - 1))
        if i in slots:
            shown = next(recurring_iter)
            kind, objects, background = shown.kind, shown.objects, shown.background
        else:
            kind = KINDS[int(train_rng.integers(2))]
            objects = random_scene(train_rng, kind)
            while train_scenes == "disjoint" and (kind, frozenset(objects)) in used:
                objects = random_scene(train_rng, kind)
            background = _pick(train_rng, BACKGROUNDS)
        train.append(VideoSpec(f"train-{i:05d}", "train", kind, "", "", objects, background,
                               video_seed))
    return train + val + test
