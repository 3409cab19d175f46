"""Old Lance versions: keep the ones something still names, clean the rest.

Every commit to a Lance table makes a version, and the files a version references stay on
disk until it is cleaned up: re-indexing (upserts, then compaction) leaves the tables at
about twice their live bytes. Runs and registered models name table versions (their
lineage, `tasks/tracking.py`), and `checkout_run_tables` must still open those.

`clean_old_versions(uri, protected, min_age_s)` makes each protected version a Lance tag
(`crosstvr-v<N>`: cleanup never removes a tagged version), drops the crosstvr tags of
versions no longer protected, and removes every other version older than `min_age_s`
(the latest always stays). Which versions are protected is the caller's business (the
MLflow side lives in `tasks/retention.py`); this module only talks to Lance.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import lance
import lancedb

TAG_PREFIX = "crosstvr-v"


def version_tag(version: int) -> str:
    return f"{TAG_PREFIX}{version}"


@dataclass
class TableRetention:
    """What cleaning one table did (or, for a dry run, would do)."""

    table: str
    latest: int
    kept: list[int]  # versions left after the cleanup (protected, recent, latest)
    removed: list[int]  # versions that are gone (dry run: would go)
    protected_missing: list[int] = field(default_factory=list)  # named, but already gone
    bytes_removed: int = 0


@dataclass
class RetentionReport:
    uri: str
    tables: dict[str, TableRetention]
    bytes_before: int | None  # on-disk bytes of the database (local paths only)
    bytes_after: int | None
    dry_run: bool = False

    def summary(self) -> str:
        removed = sum(len(t.removed) for t in self.tables.values())
        kept = sum(len(t.kept) for t in self.tables.values())
        size = ""
        if self.bytes_before is not None and self.bytes_after is not None:
            size = f"; {self.bytes_before / 1e6:.2f} MB -> {self.bytes_after / 1e6:.2f} MB"
        verb = "would remove" if self.dry_run else "removed"
        missing = {n: t.protected_missing for n, t in self.tables.items() if t.protected_missing}
        gone = f"; named but already gone: {missing}" if missing else ""
        return (f"{self.uri}: {verb} {removed} old version(s), kept {kept} in "
                f"{len(self.tables)} table(s){size}{gone}")


def local_bytes(uri: str) -> int | None:
    """Bytes under a local database directory; None for object stores."""
    if "://" in uri and not uri.startswith("file://"):
        return None
    root = Path(uri.removeprefix("file://"))
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += os.path.getsize(os.path.join(folder, name))
    return total


def _table_names(db) -> list[str]:
    names, token = [], None
    while True:
        page = db.list_tables(page_token=token)
        names += list(page.tables)
        token = page.page_token
        if not token:
            return names


def _sync_tags(table, protected: set[int], existing: set[int]) -> list[int]:
    """Tag every protected version that still exists, untag the ones no longer protected;
    returns the protected versions that no longer exist."""
    tags = {name: info["version"] for name, info in table.tags.list().items()
            if name.startswith(TAG_PREFIX)}
    for name, version in tags.items():
        if version not in protected or name != version_tag(version):
            table.tags.delete(name)
    tagged = {v for n, v in tags.items() if v in protected and n == version_tag(v)}
    for version in sorted((protected & existing) - tagged):
        try:
            table.tags.create(version_tag(version), version)
        except Exception as exc:  # another cleanup tagged it meanwhile
            if version_tag(version) not in table.tags.list():
                raise RuntimeError(f"table '{table.name}': cannot tag version {version}: "
                                   f"{exc}") from exc
    return sorted(protected - existing)


def _files_of_version(dataset_uri: str, version: int,
                      storage_options: dict[str, str] | None) -> set[str]:
    """Data and deletion files (relative to the table) that one version references."""
    ds = lance.dataset(dataset_uri, version=version, storage_options=storage_options)
    files = set()
    for fragment in ds.get_fragments():
        files.update(f"data/{f.path}" for f in fragment.data_files())
        deletion = fragment.deletion_file()
        if deletion:
            files.add(deletion)
    return files


def _remove_orphans(dataset_uri: str, orphans: set[str]) -> int:
    """Delete files only removed versions referenced (local tables); returns bytes freed.

    Lance's cleanup (pylance 4.0) lists data files only up to the oldest version it keeps:
    with a tagged old version, the files of newer removed versions are never deleted and,
    their manifests gone, are never reclaimed (lance-format/lance#8516, fixed upstream in
    #8708). A file referenced by a removed manifest and by no kept one belongs to no write
    in progress (Lance's own rule), so it is deleted here."""
    if "://" in dataset_uri and not dataset_uri.startswith("file://"):
        return 0  # object stores: left to a Lance release with the fix
    root = Path(dataset_uri.removeprefix("file://"))
    freed = 0
    for rel in sorted(orphans):
        path = root / rel
        with contextlib.suppress(FileNotFoundError):
            size = path.stat().st_size
            path.unlink()
            freed += size
    return freed


def clean_old_versions(uri: str, protected: Mapping[str, set[int]], min_age_s: float,
                       storage_options: dict[str, str] | None = None,
                       dry_run: bool = False) -> RetentionReport:
    """Remove the versions of every table in the database at `uri` that are neither in
    `protected[table]`, nor tagged by anyone, nor younger than `min_age_s`, nor the latest.

    Protected versions become `crosstvr-v<N>` tags first, so Lance's own cleanup skips
    them; a crosstvr tag on a version no longer protected is dropped. Files a failed
    write left behind are not touched (Lance removes those after 7 days).
    """
    db = lancedb.connect(uri, storage_options=storage_options)
    before = local_bytes(uri)
    cutoff = dt.datetime.now() - dt.timedelta(seconds=min_age_s)
    reports: dict[str, TableRetention] = {}
    for name in _table_names(db):
        table = db.open_table(name)
        versions = {v["version"]: v["timestamp"] for v in table.list_versions()}
        latest = max(versions)
        keep = set(protected.get(name, set()))
        other_tags = {info["version"] for tag, info in table.tags.list().items()
                      if not tag.startswith(TAG_PREFIX)}
        # Lance compares version times in local time, naive; so do we (dry run only)
        candidates = sorted(v for v, ts in versions.items()
                            if v != latest and v not in keep and v not in other_tags
                            and (min_age_s <= 0 or _naive(ts) < cutoff))
        report = TableRetention(name, latest, [], [], sorted(keep - set(versions)))
        reports[name] = report
        if dry_run:
            report.removed = candidates
            report.kept = sorted(set(versions) - set(candidates))
            continue
        dataset = table.to_lance()
        files = {v: _files_of_version(dataset.uri, v, storage_options) for v in versions}
        _sync_tags(table, keep, set(versions))
        stats = dataset.cleanup_old_versions(older_than=dt.timedelta(seconds=min_age_s),
                                             error_if_tagged_old_versions=False)
        left = {v["version"] for v in db.open_table(name).list_versions()}
        report.kept = sorted(left)
        report.removed = sorted(set(versions) - left)
        still_used = set().union(*(files[v] for v in left))
        orphans = set().union(*(files[v] for v in report.removed)) - still_used
        report.bytes_removed = int(stats.bytes_removed) + _remove_orphans(dataset.uri, orphans)
    after = before if dry_run else local_bytes(uri)
    return RetentionReport(str(uri), reports, before, after, dry_run)


def _naive(ts: dt.datetime) -> dt.datetime:
    return ts.astimezone().replace(tzinfo=None) if ts.tzinfo else ts
