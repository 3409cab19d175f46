"""Index throughput and storage: the whole Ray Data pipeline against a bare encoder loop.

    .venv/bin/python benchmarks/bench_index.py                     # ViT-B/32, 180 clips x 12
    .venv/bin/python benchmarks/bench_index.py --default-clips     # the embedded default

`--default-clips` is the generated benchmark's shape: the tiny encoder, 600 clips of 64x64,
16 frames at 8 fps, F = 8, only the all-patches pipeline. Prints, as markdown:
* clips/s and frames/s of token extraction through the pipeline (read list -> decode tasks ->
  encoder actor pool -> Lance upserts; wall time of `index_videos`, Ray already up) and of an
  in-process loop of the same open_clip forward, same threads, same batch size, on frames
  already in memory; their ratio (target >= 0.95), in wall time and in CPU time per frame
  (the CPU ratio means the same on a loaded machine; the wall ratio does not);
* bytes per video of the token tables, measured on disk, all patches vs `index.keep_patches`,
  and computed from the token shapes for ViT-B/32 and ViT-L/14 at F = 12.

Clips are rendered with ffmpeg (testsrc2 with a hue per clip, h264). Weights are a seeded
random init: speed and storage do not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.runtime import apply_offline_env  # noqa: E402

apply_offline_env()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from crosstvr_core.config import load_config  # noqa: E402
from crosstvr_core.data.datasets import load_folder_dataset  # noqa: E402
from crosstvr_core.storage import TokenIndex, TokenShapes  # noqa: E402


def render_corpus(root: Path, videos: int, size: str, seconds: float, fps: int) -> Path:
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(videos):
        path = root / "videos" / f"clip{i:04d}.mp4"
        if not path.is_file():
            subprocess.run(
                ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                 f"testsrc2=size={size}:rate={fps},hue=h={(i * 37) % 360}", "-t", str(seconds),
                 "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)],
                check=True)
        rows.append({"video": f"videos/{path.name}", "caption": f"clip {i}", "split": "train"})
    captions = root / "captions.jsonl"
    captions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return captions


def in_process_frames_per_s(encoder, frames: int, batch: int, threads: int
                            ) -> tuple[float, float]:
    """The bare forward: preprocessed frames in memory, no decode, no Ray, no writes.
    (frames/s, CPU seconds per frame)."""
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, encoder.image_size, encoder.image_size, 3), np.uint8)
    encoder.encode_frames(images[:2])  # warm-up
    done, cpu, start = 0, time.process_time(), time.perf_counter()
    while done < frames:
        encoder.encode_frames(images)
        done += batch
    return done / (time.perf_counter() - start), (time.process_time() - cpu) / done


class TreeCPU:
    """CPU seconds of this process and every process below it (the Ray runtime, its workers
    and the ffmpeg processes they ran), sampled from /proc every `interval` s in a thread, so
    a worker that exits (an encoder actor at the end of a run) keeps its last value. A
    worker's value includes its reaped children (ffmpeg); the driver and the raylet, which
    reap processes that are sampled themselves, count only their own time. Unlike wall
    time, it means the same on a loaded machine (Linux only)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.seen, self.start = interval, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> dict[int, float]:
        parents, values = {}, {}
        tick = os.sysconf("SC_CLK_TCK")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            comm, fields = raw[raw.index("(") + 1:raw.rindex(")")], raw.rsplit(")", 1)[1].split()
            pid = int(entry.name)
            parents[pid] = int(fields[1])
            own = sum(int(f) for f in fields[11:13]) / tick
            reaped = sum(int(f) for f in fields[13:15]) / tick
            if comm not in ("ffmpeg", "ffprobe"):  # counted by the worker that waited for it
                values[pid] = own + (0.0 if pid == os.getpid() or comm == "raylet" else reaped)
        tree, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            pid = frontier.pop()
            children = [c for c, parent in parents.items() if parent == pid and c not in tree]
            tree.update(children)
            frontier.extend(children)
        return {pid: value for pid, value in values.items() if pid in tree}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.seen.update(self._sample())

    def __enter__(self) -> TreeCPU:
        self.start = self._sample()
        self.seen = dict(self.start)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seen.update(self._sample())
        self.seconds = sum(v - self.start.get(pid, 0.0) for pid, v in self.seen.items())


def table_bytes(uri: str) -> tuple[int, int]:
    """(bytes of the live version's data files, bytes of every file incl. older versions,
    which Lance keeps for lineage checkouts until `optimize(cleanup_older_than=...)`)."""
    import lance

    path = Path(uri) / "video_tokens.lance"
    live = sum((path / "data" / f.path).stat().st_size
               for fragment in lance.dataset(str(path)).get_fragments()
               for f in fragment.data_files())
    return live, sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def shape_bytes(shapes: TokenShapes) -> int:
    """fp16 CLS [F, D] + patches [F, P, Wv] + int16 patch index [F, P] + mask [F] per video."""
    f, p = shapes.num_frames, shapes.num_patches
    return 2 * f * (shapes.embed_dim + p * shapes.vision_width) + 2 * f * p + f


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="ViT-B-32")
    parser.add_argument("--videos", type=int, default=180)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--clip-size", default="320x240")
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the encoder")
    parser.add_argument("--batch", type=int, default=32, help="encoder frame batch size")
    parser.add_argument("--keep-patches", type=int, default=4,
                        help="the second pipeline's index.keep_patches (0: no second run)")
    parser.add_argument("--default-clips", action="store_true",
                        help="the embedded default: tiny encoder, 600 64x64 clips of 16 frames "
                        "at 8 fps, F = 8, no keep-patches run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another config override for both pipelines (repeatable)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="pipeline runs, each between two runs of the in-process loop")
    parser.add_argument("--workdir", default=None, help="reuse a rendered corpus")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="index this folder (videos + captions.jsonl, e.g. the generated "
                        "benchmark under $CROSSTVR_HOME/datasets/) instead of rendering clips")
    args = parser.parse_args()
    if args.default_clips:
        args.encoder, args.videos, args.frames, args.clip_size = "crosstvr-tiny-vit", 600, 8, "64x64"
        args.seconds, args.fps, args.keep_patches = 2, 8, 0

    import ray

    from tasks.index import index_videos, load_encoder, token_shapes

    load = os.getloadavg()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="crosstvr-bench-index-"))
    if args.corpus:
        corpus = args.corpus.resolve()
        dataset = load_folder_dataset(corpus, corpus / "captions.jsonl", "bench")
        args.videos = len(dataset.videos)
    else:
        captions = render_corpus(work / "corpus", args.videos, args.clip_size, args.seconds,
                                 args.fps)
        dataset = load_folder_dataset(work / "corpus", captions, "bench")
    work.mkdir(parents=True, exist_ok=True)
    home = tempfile.mkdtemp(dir=work, prefix="home-")  # fresh tables: nothing is skipped
    common = [f"home={home}", f"encoder.name={args.encoder}",
              f"sampling.num_frames={args.frames}", f"encoder.torch_threads={args.threads}",
              f"encoder.frame_batch_size={args.batch}", "encoder.pretrained=null", *args.set]
    # the loop runs before the first pipeline and after each round: on a shared machine the
    # load drifts, so each pipeline is compared with the loops on either side of it
    loop_frames = max(args.batch, min(640, args.videos * args.frames))
    loop_encoder = load_encoder(load_config(None, common))
    loops = [in_process_frames_per_s(loop_encoder, loop_frames, args.batch, args.threads)]
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    rows = []
    runs = [("all patches", [])]
    if args.keep_patches:
        runs.append((f"keep {args.keep_patches}", [f"index.keep_patches={args.keep_patches}"]))
    for round_ in range(args.rounds):
        for label, extra in runs:
            cfg = load_config(None, [*common, f"data.name=bench-{len(rows)}", *extra])
            encoder = load_encoder(cfg)
            shapes = token_shapes(cfg, encoder)
            index = TokenIndex(cfg.lance_uri, encoder.encoder_id, shapes)
            with TreeCPU() as tree:
                start = time.perf_counter()
                counts = index_videos(cfg, dataset, index, encoder.image_size)
                seconds = time.perf_counter() - start
                time.sleep(1.0)  # the encoder actor's last CPU, before it exits
            cpu = tree.seconds
            index.compact()
            frames = counts["ok"] * args.frames
            live, total = table_bytes(cfg.lance_uri)
            n = max(1, counts["ok"])
            rows.append((round_, label, counts["ok"], frames, seconds, frames / seconds,
                         live / n, total / n, shape_bytes(shapes), cpu))
        loops.append(in_process_frames_per_s(loop_encoder, loop_frames, args.batch,
                                             args.threads))
    ray.shutdown()

    shape = (f"of {args.corpus}" if args.corpus else
             f"{args.clip_size} x {args.seconds:g} s at {args.fps} fps")
    print(f"\n{args.encoder}, {args.videos} clips {shape}, F = {args.frames}, torch threads "
          f"{args.threads}, batch {args.batch}"
          + (f", {' '.join(args.set)}" if args.set else "") + "\n")
    print("| round | pipeline | videos | frames | wall s | clips/s | CPU ms/clip | frames/s | "
          "loop frames/s (before, after) | vs loop (wall) | vs loop (CPU) | bytes/video live | "
          "on disk incl. old versions | bytes/video (shapes) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    ratios: dict[str, list[float]] = {}
    for round_, label, videos, frames, seconds, fps, live, disk, computed, cpu in rows:
        (before, before_cpu), (after, after_cpu) = loops[round_], loops[round_ + 1]
        loop, loop_cpu = (before + after) / 2, (before_cpu + after_cpu) / 2
        ratios.setdefault(label, []).append(fps / loop)
        cpu_ratio = loop_cpu * frames / cpu if cpu else 0.0
        print(f"| {round_ + 1} | {label} | {videos} | {frames} | {seconds:.1f} | "
              f"{videos / seconds:.1f} | {1000 * cpu / max(1, videos):.0f} | {fps:.1f} | "
              f"{loop:.1f} ({before:.1f}, {after:.1f}) | {fps / loop:.2f} | {cpu_ratio:.2f} | "
              f"{live:,.0f} | {disk:,.0f} | {computed:,} |")
    print(f"\nin-process `encode_frames` loop: {loop_frames} frames before the first pipeline "
          f"and after each round; CPU ms per clip of it: "
          + ", ".join(f"{1000 * c * args.frames:.0f}" for _, c in loops))
    for label, values in ratios.items():
        print(f"median wall ratio, {label}: {statistics.median(values):.2f} over {len(values)} "
              "round(s)")
    print(f"\nload average before / after: {load[0]:.1f} / {os.getloadavg()[0]:.1f} "
          f"(1 min; {os.cpu_count()} cores)")

    print("\nbytes per video from token shapes (fp16, F = 12):\n")
    print("| encoder | D | P | Wv | all patches | keep 16 | keep 4 |")
    print("|---|---|---|---|---|---|---|")
    for name, d, p, w in (("ViT-B/32 @224", 512, 49, 768), ("ViT-B/16 @224", 512, 196, 768),
                          ("ViT-L/14 @224", 768, 256, 1024), ("ViT-L/14 @336", 768, 576, 1024)):
        sizes = [shape_bytes(TokenShapes(12, d, m, w, 77, 512)) for m in (p, 16, 4)]
        print(f"| {name} | {d} | {p} | {w} | " + " | ".join(f"{b / 1e6:.2f} MB" for b in sizes)
              + " |")


if __name__ == "__main__":
    main()
