"""Draw the contact sheet of docs/benchmark-data.md: near-duplicate groups, frames, captions.

For a few test cubes of the default benchmark (seed 0): the cube's reference video and its
three one-factor near-duplicates, each as a row of frames decoded from the real mp4, with
its test caption beneath.

    .venv/bin/python infra/make_contact_sheet.py                  # docs/images/contact_sheet.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
from pathlib import Path

import ffmpeg
import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crosstvr_core import synthetic  # noqa: E402
from crosstvr_core.config import DataConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _decode(path: Path) -> np.ndarray:
    probe = ffmpeg.probe(str(path))["streams"][0]
    out, _ = (ffmpeg.input(str(path)).output("pipe:", format="rawvideo", pix_fmt="rgb24")
              .run(capture_stdout=True, capture_stderr=True))
    return np.frombuffer(out, np.uint8).reshape(-1, probe["height"], probe["width"], 3)


def _pattern(spec: synthetic.VideoSpec) -> str:
    roles = {o.role for o in spec.objects}
    return spec.kind if spec.kind == "motion" else "-".join(sorted(roles - {"still"}))


def pick_groups(specs: list[synthetic.VideoSpec], count: int) -> list[list[synthetic.VideoSpec]]:
    """The first test cube of each distinct scene pattern, up to `count` cubes."""
    cubes: dict[str, list[synthetic.VideoSpec]] = {}
    for spec in specs:
        if spec.split == "test":
            cubes.setdefault(spec.group, []).append(spec)
    chosen, seen = [], set()
    for members in cubes.values():
        pattern = _pattern(members[0])
        if pattern not in seen:
            seen.add(pattern)
            chosen.append(members)
        if len(chosen) == count:
            break
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "images" / "contact_sheet.png"))
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--frames", type=int, default=4, help="frames shown per video")
    parser.add_argument("--scale", type=int, default=2, help="pixel zoom of the frames")
    args = parser.parse_args()

    data = DataConfig()
    specs = synthetic.make_benchmark_specs(0, data.num_test_groups, data.seed, data.train_scenes)
    captions = {row["video"]: row["caption"] for row in synthetic.caption_rows(specs, 1, data.seed)}
    font = ImageFont.load_default(size=13)
    tile = data.frame_size * args.scale
    gap, width = 6, args.frames * (data.frame_size * args.scale + 6) + 6
    rows: list[Image.Image] = []
    with tempfile.TemporaryDirectory() as root:
        for members in pick_groups(specs, args.groups):
            by_corner = {m.corner: m for m in members}
            reference = by_corner["000"]
            shown = [("reference", reference)] + [
                (f"{factor} twin", by_corner[synthetic.twin_corner("000", i)])
                for i, factor in enumerate(synthetic.CUBE_FACTORS[reference.kind])
            ]
            header = Image.new("RGB", (width, 26), "white")
            ImageDraw.Draw(header).text(
                (gap, 6), f"group {reference.group} ({_pattern(reference)} scene)",
                fill="black", font=font)
            rows.append(header)
            for label, spec in shown:
                rel = synthetic.render_video(spec, root, data.frame_size, data.rendered_frames,
                                             data.fps)
                frames = _decode(Path(root) / rel)
                picks = np.linspace(0, len(frames) - 1, args.frames).round().astype(int)
                lines = textwrap.wrap(f"{label}: {captions[rel]}", width // 7)
                row = Image.new("RGB", (width, tile + 10 + 16 * len(lines)), "white")
                for k, t in enumerate(picks):
                    image = Image.fromarray(frames[t]).resize((tile, tile), Image.NEAREST)
                    row.paste(image, (gap + k * (tile + gap), 4))
                draw = ImageDraw.Draw(row)
                for n, line in enumerate(lines):
                    draw.text((gap, tile + 6 + 16 * n), line, fill="black", font=font)
                rows.append(row)
    sheet = Image.new("RGB", (width, sum(r.height for r in rows)), "white")
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=128).save(out, optimize=True)
    print(f"{out}: {sheet.width}x{sheet.height}, {out.stat().st_size / 1024:.0f} kB")


if __name__ == "__main__":
    main()
