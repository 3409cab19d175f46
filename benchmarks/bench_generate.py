"""How fast the generated benchmark renders: videos/s, serial and with worker processes.

Each case renders and encodes real mp4 clips (numpy frames, one ffmpeg per batch of clips,
as tasks/prepare_dataset.py does) into a temp dir, for 224x224x12 clips (the issue's bar:
>= 20 videos/s on 2 cores) and for the default 64x64x16 config. `--per-clip` adds the
one-ffmpeg-per-clip path for comparison. The load average is printed with each line,
because the machine is shared.

    .venv/bin/python benchmarks/bench_generate.py                 # about 1 minute
    .venv/bin/python benchmarks/bench_generate.py --videos 960 --repeats 3 --per-clip
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crosstvr_core import synthetic  # noqa: E402
from crosstvr_core.config import DataConfig  # noqa: E402


def _render_chunk(args: tuple) -> int:
    specs, root, size, frames, fps, per_clip = args
    if per_clip:
        for spec in specs:
            synthetic.encode_mp4(synthetic.render_frames(spec, size, frames),
                                 Path(root) / synthetic.video_relpath(spec), fps)
    else:
        synthetic.render_videos(specs, root, size, frames, fps)
    return len(specs)


def measure(specs, size: int, frames: int, fps: int, processes: int, batch: int,
            per_clip: bool) -> float:
    """Videos per second for rendering + encoding `specs` from scratch."""
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as root:
        chunks = [(specs[i : i + batch], root, size, frames, fps, per_clip)
                  for i in range(0, len(specs), batch)]
        started = time.perf_counter()
        if processes == 1:
            done = sum(_render_chunk(c) for c in chunks)
        else:
            with ProcessPoolExecutor(processes) as pool:
                done = sum(pool.map(_render_chunk, chunks))
        elapsed = time.perf_counter() - started
        assert done == len(specs) == len(list(Path(root).rglob("*.mp4")))
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=DataConfig().render_batch_size)
    parser.add_argument("--per-clip", action="store_true", help="also time one ffmpeg per clip")
    args = parser.parse_args()
    groups = args.videos // 16
    specs = synthetic.make_benchmark_specs(args.videos - 8 * groups, groups, seed=0)
    default = DataConfig()
    cases = [(224, 12, default.fps), (default.frame_size, default.rendered_frames, default.fps)]
    modes = [False, True] if args.per_clip else [False]
    print(f"{len(specs)} videos, {os.cpu_count()} CPUs, batch {args.batch}")
    print(f"{'clip':>10} {'encode':>9} {'procs':>5} {'videos/s':>9}  load average (1, 5 min)")
    for size, frames, fps in cases:
        for per_clip in modes:
            for processes in (1, 2):
                for _ in range(args.repeats):
                    rate = measure(specs, size, frames, fps, processes, args.batch, per_clip)
                    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()[:2])
                    label = f"{size}x{size}x{frames}"
                    encode = "per-clip" if per_clip else "batched"
                    print(f"{label:>10} {encode:>9} {processes:>5} {rate:9.1f}  {load}",
                          flush=True)


if __name__ == "__main__":
    main()
