"""Captions of generated scenes: a small grammar with paraphrases.

A caption is built from a *style*: a fixed-length tuple of random choices (template, synonyms,
connectives, optional background clause). Every choice is taken modulo its number of options,
so the same style applied to two scenes of the same kind makes the same choices wherever the
scenes agree. Test captions draw one style per cube, so the captions of near-duplicates differ
only in the words of the factor that differs (colour, position, direction or order); training
captions draw a style per caption, so text is not a fixed template.

Every attribute a scene's identity depends on (shape, size, colour, place, direction, events,
still objects) is always said; only the background is optional, and it is not part of a
scene's identity (see VideoSpec.content).
"""

from __future__ import annotations

import zlib

import numpy as np

from crosstvr_core.synthetic.scenes import CUBE_SPLITS, SceneObject, VideoSpec

STYLE_LENGTH = 12
Style = tuple[int, ...]

SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
SHAPE_WORDS = {
    "circle": ("circle", "disc"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus sign"),
    "ring": ("ring", "hoop"),
}
BACKGROUND_WORDS = {"dark": ("dark",), "grey": ("grey", "gray"), "light": ("light", "bright")}
DIRECTION_WORDS = {
    "left": ("left", "to the left", "leftwards"),
    "right": ("right", "to the right", "rightwards"),
    "up": ("up", "upwards", "upward"),
    "down": ("down", "downwards", "downward"),
}
BAND_WORDS = {
    "top": "the top",
    "middle": "the middle",
    "bottom": "the bottom",
    "left": "the left side",
    "centre": "the centre",
    "right": "the right side",
}
MOTION_VERBS = (("moves", "moving"), ("slides", "sliding"), ("travels", "travelling"),
                ("drifts", "drifting"), ("glides", "gliding"))
STILL_VERBS = ("sits", "stays", "rests", "waits")
# (arrives, leaves): an order swap of a one-event scene exchanges exactly these words.
EVENT_VERBS = (("appears", "disappears"), ("shows up", "vanishes"),
               ("comes into view", "goes out of view"), ("pops up", "goes away"))

MOTION_TEMPLATES = (
    "{M} {V} {D} along {B}",
    "along {B}, {M} {V} {D}",
    "{M} is {Ving} {D} along {B}",
    "{M} {V} {D} across {B} of the frame",
    "we see {M} {Ving} {D} along {B}",
)
THEN_TEMPLATES = (  # A is seen first (it leaves), B second (it arrives)
    "{A} appears in {RA}, then {B} appears in {RB}",
    "first {A} in {RA}, then {B} in {RB}",
    "{A} in {RA} is replaced by {B} in {RB}",
    "{A} in {RA} is followed by {B} in {RB}",
    "{B} in {RB} comes after {A} in {RA}",
)
SINGLE_TEMPLATES = (
    "{A} {E} in {R}",
    "in {R}, {A} {E}",
    "halfway through, {A} {E} in {R}",
    "{A} {E} in {R} halfway through the clip",
)
CHANGE_TEMPLATES = (
    "{A} in {R} turns from {C1} to {C2}",
    "{A} in {R} changes colour from {C1} to {C2}",
    "in {R}, {A} goes from {C1} to {C2}",
    "{A} in {R} is {C1} at first and {C2} later",
    "{A} in {R} switches from {C1} to {C2}",
)
# Where a still-object clause and a background clause go.
STILL_FORMS = ("{main}, while {S}", "{S}, while {main}", "{main} and {S}")
BACKGROUND_FORMS = ("{text}", "{text} on a {G} background", "on a {G} background, {text}")
# Slots of a style.
_TEMPLATE, _SIZE, _SHAPE, _DIRECTION, _VERB, _STILL_VERB, _STILL_FORM, _BACKGROUND, _BG_WORD = (
    range(9)
)


def _choose(style: Style, slot: int, options):
    return options[style[slot] % len(options)]


def _noun_phrase(obj: SceneObject, style: Style, with_colour: bool = True) -> str:
    size = _choose(style, _SIZE, SIZE_WORDS[obj.size])
    shape = _choose(style, _SHAPE, SHAPE_WORDS[obj.shape])
    return f"a {size} {obj.colour} {shape}" if with_colour else f"a {size} {shape}"


def _region(region: str) -> str:
    return f"the {region}"


def _still_clause(stills: list[SceneObject], style: Style) -> str:
    verb = _choose(style, _STILL_VERB, STILL_VERBS)
    return " and ".join(f"{_noun_phrase(o, style)} {verb} in {_region(o.place)}" for o in stills)


def _main_clause(spec: VideoSpec, style: Style) -> str:
    template_index = style[_TEMPLATE]
    if spec.kind == "motion":
        mover = next(o for o in spec.objects if o.role == "mover")
        verb, verb_ing = _choose(style, _VERB, MOTION_VERBS)
        return MOTION_TEMPLATES[template_index % len(MOTION_TEMPLATES)].format(
            M=_noun_phrase(mover, style), V=verb, Ving=verb_ing,
            D=_choose(style, _DIRECTION, DIRECTION_WORDS[mover.direction]),
            B=BAND_WORDS[mover.place],
        )
    by_role = {o.role: o for o in spec.objects if o.role != "still"}
    if "leaves" in by_role and "arrives" in by_role:
        a, b = by_role["leaves"], by_role["arrives"]
        return THEN_TEMPLATES[template_index % len(THEN_TEMPLATES)].format(
            A=_noun_phrase(a, style), RA=_region(a.place),
            B=_noun_phrase(b, style), RB=_region(b.place),
        )
    if "changes" in by_role:
        obj = by_role["changes"]
        return CHANGE_TEMPLATES[template_index % len(CHANGE_TEMPLATES)].format(
            A=_noun_phrase(obj, style, with_colour=False), R=_region(obj.place),
            C1=obj.colour, C2=obj.colour_after,
        )
    ((role, obj),) = by_role.items()
    arrive, leave = _choose(style, _VERB, EVENT_VERBS)
    return SINGLE_TEMPLATES[template_index % len(SINGLE_TEMPLATES)].format(
        A=_noun_phrase(obj, style), E=arrive if role == "arrives" else leave,
        R=_region(obj.place),
    )


def caption(spec: VideoSpec, style: Style) -> str:
    """The caption of `spec` in `style` (a tuple of STYLE_LENGTH non-negative ints)."""
    if len(style) != STYLE_LENGTH or any(int(s) < 0 for s in style):
        raise ValueError(f"{spec.video_id}: style must be {STYLE_LENGTH} non-negative ints, "
                         f"got {style!r}")
    text = _main_clause(spec, style)
    stills = [o for o in spec.objects if o.role == "still"]
    if stills:
        text = _choose(style, _STILL_FORM, STILL_FORMS).format(
            main=text, S=_still_clause(stills, style)
        )
    return _choose(style, _BACKGROUND, BACKGROUND_FORMS).format(
        text=text, G=_choose(style, _BG_WORD, BACKGROUND_WORDS[spec.background])
    )


def draw_style(rng: np.random.Generator) -> Style:
    return tuple(int(v) for v in rng.integers(0, 2**16, size=STYLE_LENGTH))


def captions_for(spec: VideoSpec, count: int, seed: int) -> list[str]:
    """`count` distinct captions of `spec`, deterministic from `seed`.

    Cube videos (validation, test) draw their styles from their group's key, so the k-th
    caption of every cube member uses the same style; training videos draw from their own id.
    """
    if count < 1:
        raise ValueError(f"{spec.video_id}: caption count must be >= 1, got {count}")
    key = f"{spec.split}:{spec.group}" if spec.split in CUBE_SPLITS else spec.video_id
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    captions: list[str] = []
    for _ in range(50 * count):
        text = caption(spec, draw_style(rng))
        if text not in captions:
            captions.append(text)
            if len(captions) == count:
                return captions
    raise ValueError(f"{spec.video_id}: could not make {count} distinct captions")
