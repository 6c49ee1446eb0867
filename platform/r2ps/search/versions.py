"""Versions of an index folder: each complete run of the index job is published whole, at
once, and readers follow the newest without a restart.

The layout `r2ps.repo.indexer` writes (OUT: `r2ps index`'s `.r2ps/index`, jobs/index.py's
`--out`):

    OUT/version.json         the pointer: {"version": n, "path": "versions/n", "published":
                             Unix seconds}, replaced whole (os.replace) when a run ends
    OUT/versions/<n>/        codes.parquet, index/, index_summary.json, skipped.jsonl of run
                             n: written before the pointer names them, never changed after
    OUT/serve.yaml           the settings; its `codes` and `embed_out` name OUT, and readers
                             resolve them through the pointer (`resolve`)
    OUT/codes.parquet, index/, index_summary.json, skipped.jsonl
                             hard links to the current version's files, for tools that read
                             the folder's files directly (the layout before versions)
    OUT/files.parquet, vectors/, index_run.json
                             the index job's own state, and its run record while it runs

A reader resolves the pointer once and loads that version's files: it never sees half of a
run, and a run that fails or is cut short publishes nothing (the last version stays
current). The last `KEEP` versions stay on disk, so a reader that resolved the pointer just
before a run ended still finds its files. Checking for a new version is a stat of the
pointer (`stamp`); `r2ps.search.live.LiveSearcher` does it before a query, at most every
half second. A folder written before versions (no pointer) is read as it is: version None.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

POINTER = "version.json"
VERSIONS = "versions"
KEEP = 2  # versions kept on disk: the current one and the one before it
CODES_FILE = "codes.parquet"  # r2ps.repo.units.CODES
# What a version holds that the folder's top level shows too (hard links; `link_current`)
PUBLISHED = ("codes.parquet", "index", "index_summary.json", "skipped.jsonl")


class VersionError(FileNotFoundError):
    """A pointer that cannot be read as one (damaged by hand or by a disk): no version to
    read until the next run of the index job writes it again."""


@dataclass(frozen=True)
class Version:
    """One published run of an index folder."""

    number: int
    folder: Path  # OUT/versions/<number>
    published: float  # Unix seconds

    def age_seconds(self, now: float | None = None) -> float:
        return round((time.time() if now is None else now) - self.published, 1)

    def to_dict(self) -> dict:
        """What /readyz and MCP's index_status report of it."""
        return {
            "version": self.number,
            "published": self.published,
            "age_seconds": self.age_seconds(),
        }


def stamp(out: str | Path) -> tuple[int, int, int] | None:
    """What changes whenever a new version is published: the pointer's inode, modification
    time and size (one stat); None when the folder has no pointer."""
    try:
        st = os.stat(Path(out, POINTER))
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def current(out: str | Path) -> Version | None:
    """The version `out`'s pointer names; None for a folder without one (never indexed, or
    written before versions). VersionError for a pointer that cannot be read."""
    path = Path(out, POINTER)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise VersionError(f"{path}: not a version pointer ({e})") from None
    try:
        number, rel, published = int(record["version"]), record["path"], float(record["published"])
    except (KeyError, TypeError, ValueError) as e:
        raise VersionError(f"{path}: not a version pointer (missing or bad {e})") from None
    return Version(number, Path(out, rel), published)


def resolve(codes: str, embed_out: str) -> tuple[str, str, Version | None]:
    """(codes, embed_out, version) a reader loads for settings naming `codes` and
    `embed_out` (serve.yaml's): with a pointer in `embed_out`, its current version's files
    (`codes` only when it names the folder's own codes.parquet); else the paths as they
    are, version None (a folder written before versions, a corpus index, a URI)."""
    if "://" in str(embed_out):
        return codes, embed_out, None
    version = current(embed_out)
    if version is None:
        return codes, embed_out, None
    if not Path(version.folder, "index").is_dir():
        raise FileNotFoundError(
            f"{Path(embed_out, POINTER)} names version {version.number}, and "
            f"{version.folder} holds no index (removed by hand?): run the index job again"
        )
    own = Path(embed_out, CODES_FILE).resolve()
    if "://" not in str(codes) and Path(codes).resolve() in (own, Path(embed_out).resolve()):
        codes = str(version.folder / CODES_FILE)
    return codes, str(version.folder), version


# ------------------------------------------------------------------ writing (the index job)


def next_number(out: str | Path) -> int:
    """The number of the next version: above the current one and every version folder
    there (one a killed run left unpublished is not reused)."""
    try:
        last = current(out)
    except VersionError:
        last = None
    found = [last.number] if last else []
    root = Path(out, VERSIONS)
    if root.is_dir():
        found += [int(p.name) for p in root.iterdir() if p.name.isdigit()]
    return max(found, default=0) + 1


def folder_of(out: str | Path, number: int) -> Path:
    return Path(out, VERSIONS, str(number))


def start(out: str | Path) -> Path:
    """The folder of the next version (`next_number`), made empty: a run writes its
    outputs there, then `publish`es it."""
    folder = folder_of(out, next_number(out))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def discard_unpublished(out: str | Path) -> None:
    """Remove the version folders above the current one: what a run that failed or was
    cut short had written (the current version and those before it stay)."""
    root = Path(out, VERSIONS)
    if not root.is_dir():
        return
    try:
        last = current(out)
    except VersionError:
        return
    for p in root.iterdir():
        if p.name.isdigit() and int(p.name) > (last.number if last else 0):
            shutil.rmtree(p, ignore_errors=True)


def publish(out: str | Path, number: int, published: float) -> Version:
    """Make version `number` (its folder written whole) the current one: the pointer
    replaced in one step, then the top level's links (`link_current`), then the versions
    beyond the last KEEP removed (`prune`)."""
    out = Path(out)
    version = Version(number, folder_of(out, number), published)
    record = {"version": number, "path": f"{VERSIONS}/{number}", "published": published}
    tmp = out / f".{POINTER}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / POINTER)
    link_current(out, version)
    prune(out, number)
    return version


def _link(src: Path, dst: Path) -> None:
    """`dst` replaced by a hard link to `src` (a copy where links are not supported)."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def link_current(out: Path, version: Version) -> None:
    """The top level's copy of the current version's files (PUBLISHED), as hard links:
    what the layout before versions held there, for tools that read those files directly.
    Replaced file by file (a version's files are never written again, so a link never
    changes under a reader of the version)."""
    for name in PUBLISHED:
        src, dst = version.folder / name, out / name
        if src.is_dir():
            if dst.exists() and not dst.is_dir():
                dst.unlink()
            dst.mkdir(exist_ok=True)
            names = {p.name for p in src.iterdir()}
            for stale in dst.iterdir():
                if stale.name not in names and stale.is_file():
                    stale.unlink()
            # the index's manifest last: a loader trusts what it names
            for p in sorted(src.iterdir(), key=lambda p: p.name == "manifest.json"):
                _link(p, dst / p.name)
        elif src.exists():
            _link(src, dst)


def prune(out: str | Path, number: int, keep: int = KEEP) -> None:
    """Remove the version folders other than `number` and the `keep` - 1 complete ones
    before it (a folder a run cut short left is not complete: no index_summary.json).
    Folders above `number` are left alone."""
    root = Path(out, VERSIONS)
    if not root.is_dir():
        return
    numbers = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()), reverse=True)
    kept = 1
    for n in numbers:
        if n >= number:
            continue
        folder = root / str(n)
        if kept < keep and (folder / "index_summary.json").exists():
            kept += 1
            continue
        shutil.rmtree(folder, ignore_errors=True)
