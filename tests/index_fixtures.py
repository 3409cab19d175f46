"""A small real corpus for index tests: distinct ffmpeg-rendered clips plus broken files."""

from __future__ import annotations

import json
from pathlib import Path

from video_fixtures import make_clip


def write_corpus(root: Path, num_videos: int, *, broken: bool = True, seconds: float = 1) -> dict:
    """`num_videos` 64x64 clips (every fifth one in split test) + a captions file.

    With `broken`, also a text file named .mp4, a zero-byte .mp4 and a captioned path that
    does not exist: each must end as a failed `videos` row, never as a half row.
    Returns {"root", "captions", "good": [video ids], "broken": {video id: reason}}.
    """
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    rows, good = [], []
    for i in range(num_videos):
        split = "test" if i % 5 == 0 else "train"
        source = f"testsrc2=size=64x64:rate=8,hue=h={(i * 37) % 360}"
        make_clip(videos / f"clip{i:03d}.mp4", source, "-t", str(seconds), "-c:v", "libx264",
                  "-preset", "ultrafast")
        rows.append({"video": f"videos/clip{i:03d}.mp4", "caption": f"clip {i} in hue {i * 37}",
                     "split": split})
        good.append(f"videos/clip{i:03d}")
    bad = {}
    if broken:
        (videos / "text.mp4").write_text("this is not a video\n")
        (videos / "empty.mp4").write_bytes(b"")
        bad = {"videos/text": "not_a_video", "videos/empty": "empty", "videos/gone": "missing"}
        for video_id in bad:
            rows.append({"video": f"{video_id}.mp4", "caption": f"broken {video_id}",
                         "split": "test"})
    captions = root / "captions.jsonl"
    captions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"root": root, "captions": captions, "good": good, "broken": bad}
