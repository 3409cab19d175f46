"""Tiny annotation files in the exact shapes the benchmarks distribute, plus tiny real videos.

Each `write_<format>(root)` writes that benchmark's files under `root` (ids, headers and
nesting as in the real releases, a handful of rows) and returns what a loader must find.
Videos are real files encoded once per extension by ffmpeg (`testsrc`, 64x64, 8 frames)
and copied under each name, so the loaders' paths are decodable videos, cheaply.
"""

from __future__ import annotations

import atexit
import csv
import json
import pickle
import shutil
import subprocess
import tempfile
from pathlib import Path

_ENCODED: dict[str, Path] = {}
_CACHE_DIR = Path(tempfile.mkdtemp(prefix="crosstvr-fixture-videos-"))
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)


def tiny_video(path: str | Path) -> Path:
    """A 1 s, 64x64, 8 fps test pattern in the container its extension names."""
    path = Path(path)
    extension = path.suffix.lower()
    if extension not in _ENCODED:
        template = _CACHE_DIR / f"template{extension}"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=8",
             "-t", "1", "-pix_fmt", "yuv420p", str(template)],
            check=True, capture_output=True, timeout=60,
        )
        _ENCODED[extension] = template
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_ENCODED[extension], path)
    return path


def write_videos(videos_dir: str | Path, relative_names: list[str]) -> list[Path]:
    return [tiny_video(Path(videos_dir) / name) for name in relative_names]


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


# ---------------------------------------------------------------------------------- MSR-VTT

MSRVTT_TEST = [("ret0", "msr7579", "video7579", "a girl wearing red top and black trouser is "
                "putting a sweater on a dog"),
               ("ret1", "msr7725", "video7725", "young people sit around the edges of a room "
                "clapping and raising their arms")]
MSRVTT_TRAIN = {"video0": ["a car is shown", "a group is dancing"],
                "video1": ["a man drives a vehicle through the countryside",
                           "a man drives down the road in an audi",
                           "a man driving a car"]}


def write_msrvtt(root: Path, *, with_videos: bool = True) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "MSRVTT_JSFUSION_test.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        writer.writerows(MSRVTT_TEST)
    (root / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"{v}\n" for v in MSRVTT_TRAIN))
    videos = [{"category": 9, "url": f"https://www.youtube.com/watch?v=id{v}", "video_id": v,
               "start time": 137.72, "end time": 149.44, "split": "train", "id": i}
              for i, v in enumerate([*MSRVTT_TRAIN, "video9999"])]
    sentences, sen_id = [], 0
    for video_id, captions in [*MSRVTT_TRAIN.items(), ("video9999", ["not in the 9k split"])]:
        for caption in captions:
            sentences.append({"caption": caption, "video_id": video_id, "sen_id": sen_id})
            sen_id += 1
    _write_json(root / "MSRVTT_data.json", {
        "info": {"contributor": "Microsoft MSM group", "year": "2016"},
        "videos": videos, "sentences": sentences})
    if with_videos:
        # the train clips: one mp4, one webm (CLIP4Clip's own fallback extension)
        write_videos(root / "videos", ["video7579.mp4", "video7725.mp4", "video0.mp4",
                                       "video1.webm"])
    return {"test": [r[2] for r in MSRVTT_TEST], "train": list(MSRVTT_TRAIN)}


# ------------------------------------------------------------------------------------- MSVD

MSVD_SPLITS = {"train": ["-4wsuPCjDBc_5_15"], "val": ["-7KMZQEsJW4_205_208"],
               "test": ["-8y1Q0rA3n8_108_115", "-AwoiGR6c8M_10_14"]}


def write_msvd(root: Path) -> dict[str, list[list[str]]]:
    root.mkdir(parents=True, exist_ok=True)
    captions = {}
    for split, ids in MSVD_SPLITS.items():
        (root / f"{split}_list.txt").write_text("".join(f"{v}\n" for v in ids))
        for n, video_id in enumerate(ids):
            captions[video_id] = [["a", "man", "is", "slicing", "a", "tomato"],
                                  ["someone", "cuts", "food", str(n)]][: 1 + (split == "test")]
    (root / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    write_videos(root / "videos", [f"{v}.avi" for ids in MSVD_SPLITS.values() for v in ids])
    return captions


# ----------------------------------------------------------------------------------- DiDeMo

DIDEMO_TRAIN = [
    # (video, description, times of the four annotators in 5-second segments)
    ("42148089@N00_8282457917_0b00eab4ea.mov", "the camera pans to the right",
     [[3, 3], [3, 4], [3, 3], [3, 3]]),
    ("42148089@N00_8282457917_0b00eab4ea.mov", "a dog runs into view",
     [[0, 0], [0, 1], [0, 0], [0, 0]]),
    ("94234486@N00_3442946166_bb6d7c1f12.m4v", "kids play in the snow",
     [[1, 2], [1, 1], [1, 1], [1, 2]]),
]


def write_didemo(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rows = [{"annotation_id": i, "description": d, "times": t, "video": v,
             "dl_link": f"https://www.flickr.com/video_download.gne?id={i}"}
            for i, (v, d, t) in enumerate(DIDEMO_TRAIN)]
    _write_json(root / "train_data.json", rows)
    # one clip transcoded to mp4 (the usual preprocessing), one kept as distributed
    write_videos(root / "videos", ["42148089@N00_8282457917_0b00eab4ea.mp4",
                                   "94234486@N00_3442946166_bb6d7c1f12.m4v"])


# ------------------------------------------------------------------------------ ActivityNet

ACTIVITYNET_TEST = {
    "v_uqiMw7tQ1Cc": {"duration": 55.15,
                      "timestamps": [[24.25, 38.08], [0.0, 18.03], [38.08, 55.15]],
                      "sentences": ["Then he throws the ball.", "A weight lifter stands ready.",
                                    " The crowd cheers."]},
    "v_ehGHCYKzyZ8": {"duration": 61.72, "timestamps": [[0.0, 61.72]],
                      "sentences": ["A woman is seen speaking to the camera."]},
}
ACTIVITYNET_TRAIN = {
    "v_QOlSCBRmfWY": {"duration": 82.73, "timestamps": [[0.83, 19.86], [17.37, 60.81]],
                      "sentences": ["A young woman is seen standing in a room.",
                                    " She then begins dancing around the room."]},
}


def write_activitynet(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    _write_json(root / "train.json", ACTIVITYNET_TRAIN)
    _write_json(root / "train_ids.json", list(ACTIVITYNET_TRAIN))
    _write_json(root / "val_1.json", ACTIVITYNET_TEST)
    _write_json(root / "val_ids.json", list(ACTIVITYNET_TEST))
    # files named with and without the 'v_' prefix both occur in the wild
    write_videos(root / "videos", ["v_uqiMw7tQ1Cc.mp4", "ehGHCYKzyZ8.mkv", "v_QOlSCBRmfWY.mp4"])


# ------------------------------------------------------------------------------------ VATEX

VATEX_VAL = [
    {"videoID": "Ptf_2VRj-V0_000122_000132",
     "enCap": ["A man is throwing darts at a board.", "A person throws darts in a bar."],
     "chCap": ["一个男人在扔飞镖。"]},
    # a YouTube id with '_' in it, stored as the uncut video
    {"videoID": "al_b-3ZxZKg_000010_000020",
     "enCap": ["Two kids are playing with a ball.", "Children play in a yard."],
     "chCap": ["两个孩子在玩球。"]},
]


def write_vatex(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    _write_json(root / "vatex_validation_v1.0.json", VATEX_VAL)
    write_videos(root / "videos", ["Ptf_2VRj-V0_000122_000132.mp4", "al_b-3ZxZKg.mp4"])


# ------------------------------------------------------------------------------------ LSMDC

LSMDC_TEST = [
    ("0001_American_Beauty_00.00.51.926-00.00.54.129", "00.00.51.926", "00.00.54.129",
     "00.00.51.500", "00.00.54.500", "SOMEONE sits at a computer."),
    ("0001_American_Beauty_00.01.00.200-00.01.03.100", "00.01.00.200", "00.01.03.100",
     "00.01.00.000", "00.01.03.500", "He looks up at SOMEONE."),
    ("1004_Juno_00.02.11.300-00.02.14.200", "00.02.11.300", "00.02.14.200",
     "00.02.11.000", "00.02.14.500", "SOMEONE walks down the street."),
]


def write_lsmdc(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "LSMDC16_challenge_1000_publictect.csv").write_text(
        "".join("\t".join(row) + "\n" for row in LSMDC_TEST))
    # per-movie folders as distributed, and one clip stored flat
    write_videos(root / "videos", [
        "0001_American_Beauty/0001_American_Beauty_00.00.51.926-00.00.54.129.avi",
        "0001_American_Beauty/0001_American_Beauty_00.01.00.200-00.01.03.100.avi",
        "1004_Juno_00.02.11.300-00.02.14.200.avi",
    ])


# ---------------------------------------------------------------------- folder and manifest


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
