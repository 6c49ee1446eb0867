"""Storage URIs for every job's inputs and outputs: a local path, `s3://`, `gs://`, `file://`,
or any other URI `pyarrow.fs.FileSystem.from_uri` understands.

The library works on local paths. A job stages its settings around the library call:

    with staged(cfg, inputs=["corpus", "model"], outputs=["out"]) as local:
        train(local)  # `local` is `cfg` with each URI replaced by a local path

- An input URI is downloaded to this machine's staging folder (`R2PS_STAGING_DIR`, default
  `<tmp>/r2ps-staging-<uid>`) at a path made from the URI itself
  (`s3://bucket/corpus/train` -> `<staging>/in/s3%3A%2F%2Fbucket%2Fcorpus/train`). The same URI
  always lands at the same path, so what the library records about its inputs (mining's
  settings, the split named in `mine_summary.json`) is the same on every run, and
  `source_uri` can tell which URI a recorded path stands for. Jobs on one machine that use
  the same URI at the same time share one copy; the last one to finish deletes it.
- An output URI gets a fresh local folder; on success it is uploaded to `<uri>.tmp-<id>`
  and then moved to `<uri>`, so the URI never holds half an upload. Local disks (and HDFS)
  rename a folder in one step. S3 and GCS cannot rename a folder: there the old folder is
  deleted and the upload copied object by object inside the bucket (server side, no data
  through this machine); a crash in that step leaves `<uri>` partial or missing while the
  whole upload still sits at `<uri>.tmp-<id>`. Nothing is uploaded when the job fails.
- An `updates` folder (one the library reuses, such as embeddings and an index) is an
  output that starts as a download of what is at the URI, so up-to-date parts are kept.
- A local path passes straight through: no copy, the library sees exactly that path.
- Credentials and endpoints come from the environment, the pyarrow way: `AWS_*` variables,
  `~/.aws`, or the instance profile for S3; `GOOGLE_APPLICATION_CREDENTIALS` or the metadata
  server for GCS. r2ps holds no storage code beyond this module.

The trade-off: everything passes through the driver's local disk, which must hold the
job's inputs and outputs. Ray workers on other nodes read the staged inputs themselves:
`on_this_node` (training workers, embedding actors: the same staging path, a copy of their
own where the driver's is not) and `input_file` (short tasks: the file straight from its
URI: embedding reads, corpus extraction). Outputs are written on the driver (embedding
shards come back to it). At 100M codes the embeddings should instead go straight to the
URI from the actors (Ray Data's `write_parquet` takes URIs); docs/STORAGE.md has the
details and the limits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pyarrow.fs as pafs

from r2ps.log import get_logger

log = get_logger(__name__)

T = TypeVar("T")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(path: str | os.PathLike | None) -> bool:
    """True for `scheme://...` (including `file://`), False for a plain local path."""
    return bool(path) and bool(_URI.match(str(path)))


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a URI or a local path."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def exists(path: str, inside: str = "") -> bool:
    """Whether `path` (a local path or a URI), or `inside` it when given (a relative path
    such as "train/codes.parquet"), names a file or a folder.

    A URI costs one metadata request (an object store has a folder when something is stored
    under it). Raises OSError when the store cannot be asked (credentials, network), and
    pyarrow's ArrowInvalid (a ValueError) for a scheme pyarrow does not know.
    """
    if not is_uri(path):
        return os.path.exists(os.path.join(path, inside) if inside else path)
    if inside:  # inside the URI's path, before any ?query
        parts = urlsplit(path)
        path = urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{inside}"))
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of local `path` to write (a file or a folder), renamed onto
    `path` when the block succeeds and removed when it fails: readers see the old `path`
    or the whole new one, never a part. The one way r2ps writes a local output in place.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)  # os.replace cannot put a folder onto a non-empty one
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to local `path` through `atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def staging_root() -> Path:
    default = Path(tempfile.gettempdir()) / f"r2ps-staging-{os.getuid()}"
    return Path(os.environ.get("R2PS_STAGING_DIR") or default).resolve()


def _local_name(uri: str) -> Path:
    """`s3://b/corpus/test?region=x` -> `s3%3A%2F%2Fb%2Fcorpus/test`.

    The URI's own name is kept (jobs name data sets after their folder), under one folder
    named by the rest of it, so the staging paths of two URIs never nest. The query is
    not part of the path.
    """
    parts = urlsplit(uri)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")).rstrip("/")
    parent, _, name = base.rpartition("/")
    return Path(quote(parent, safe=""), name)


def staging_path(uri: str) -> Path:
    """Where input `uri` is staged on this machine: the same path on every run."""
    return staging_root() / "in" / _local_name(uri)


def source_uri(path: str | os.PathLike) -> str | None:
    """The URI a staging path (or a file under one) stands for; None for any other path.

    Query parameters are not kept in the path: give endpoints and regions by environment.
    """
    return _uri_of(path, "in")


def _uri_of(path: str | os.PathLike, area: str, depth: int = 0) -> str | None:
    """The URI a path under `<staging>/<area>` stands for ("in": staged inputs, "out":
    pipeline mirrors), cut to its first `depth` parts below the area when `depth` is set
    (2: the staged folder itself; 3: a mirror's stage folder). None for any other path,
    or one too short to name that much."""
    try:
        parts = Path(path).relative_to(staging_root() / area).parts
    except ValueError:
        return None
    parts = parts[:depth] if depth else parts
    if len(parts) < max(depth, 2):
        return None
    parent, *rest = parts  # (`quote`d "scheme://host/dirs", name, below...)
    return "/".join([unquote(parent), *rest])


# ---------------------------------------------------------------- copies


def _copy(src: str, dest: str, src_fs: pafs.FileSystem, dest_fs: pafs.FileSystem) -> bool:
    """Copy a file or a folder tree; False when `src` does not exist."""
    info = src_fs.get_file_info(src)
    if info.type == pafs.FileType.NotFound:
        return False
    if info.type == pafs.FileType.Directory:
        dest_fs.create_dir(dest)  # so an empty folder is copied too
    pafs.copy_files(src, dest, source_filesystem=src_fs, destination_filesystem=dest_fs)
    return True


def download(uri: str, local: str | Path) -> bool:
    """Copy `uri` (a file or a folder) to the local path `local`; False when it is missing."""
    start = time.perf_counter()
    fs, path = filesystem(uri)
    found = _copy(path, str(Path(local).resolve()), fs, pafs.LocalFileSystem())
    if found:
        log.info("staged %s -> %s (%.1f s)", uri, local, time.perf_counter() - start)
    return found


def _delete(fs: pafs.FileSystem, path: str) -> None:
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def _move(fs: pafs.FileSystem, src: str, dest: str) -> bool:
    """Rename a folder in one step; False where the filesystem cannot (S3, GCS)."""
    try:
        fs.move(src, dest)
    except (OSError, NotImplementedError):
        return False
    return True


def _replace(fs: pafs.FileSystem, tmp: str, path: str) -> None:
    """Put the complete upload `tmp` at `path`, replacing whatever was there."""
    old = f"{tmp}.old"
    had_old = fs.get_file_info(path).type != pafs.FileType.NotFound
    if had_old and not _move(fs, path, old):
        _delete(fs, path)  # no rename: the old folder goes first
        had_old = False
    if not _move(fs, tmp, path):  # S3, GCS: copy object by object inside the bucket
        entries = fs.get_file_info(pafs.FileSelector(tmp, recursive=True))
        fs.create_dir(path)
        for info in sorted(entries, key=lambda e: e.type != pafs.FileType.Directory):
            target = path + info.path[len(tmp) :]
            if info.type == pafs.FileType.Directory:
                fs.create_dir(target)  # folders first: a local disk needs them
            else:
                fs.copy_file(info.path, target)
        fs.delete_dir(tmp)
    if had_old:
        _delete(fs, old)


def upload(local: str | Path, uri: str) -> None:
    """Copy the local folder `local` to `uri`, replacing it (see the module docstring)."""
    start = time.perf_counter()
    fs, path = filesystem(uri)
    path = path.rstrip("/")
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        if not _copy(str(Path(local).resolve()), tmp, pafs.LocalFileSystem(), fs):
            raise FileNotFoundError(f"{local}: no output to upload to {uri}")
    except BaseException:
        with contextlib.suppress(OSError):
            _delete(fs, tmp)
        raise
    _replace(fs, tmp, path)
    log.info("uploaded %s -> %s (%.1f s)", local, uri, time.perf_counter() - start)


# ---------------------------------------------------------------- staging


def _try_lock(lock: IO, mode: int) -> bool:
    try:
        fcntl.flock(lock, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def local_input(path: str) -> Iterator[str]:
    """A local path to read `path` from: `path` itself when local, else a download.

    A missing URI stages as a missing local path (with a warning), so the library reports
    or skips it exactly as it would a missing local path.
    """
    if not is_uri(path):
        yield path
        return
    with _shared_copy(path, staging_path(path)):
        yield str(staging_path(path))


@contextlib.contextmanager
def _shared_copy(uri: str, local: Path, keep: bool = False) -> Iterator[None]:
    """Hold a copy of `uri` at `local`, shared by every process of this node that uses it.

    A shared flock on `<local>.lock` per user; an exclusive one to make or delete the
    copy. `<local>.staged` marks a complete copy. The last user deletes it, unless `keep`
    (a finished pipeline stage, which never changes: kept for later stages); a copy
    without `keep` that nobody holds is a leftover (a crashed user) and is downloaded
    afresh.
    """
    local.parent.mkdir(parents=True, exist_ok=True)
    done = local.with_name(local.name + ".staged")
    with open(local.with_name(local.name + ".lock"), "a") as lock:
        while True:
            if _try_lock(lock, fcntl.LOCK_EX) and not (keep and done.exists()):
                done.unlink(missing_ok=True)
                _delete(pafs.LocalFileSystem(), str(local))
                if not download(uri, local):
                    log.warning("%s does not exist (staged as the missing path %s)", uri, local)
                    if keep:  # not marked complete: a later call looks again
                        break
                done.touch()
            fcntl.flock(lock, fcntl.LOCK_SH)  # waits while another process downloads
            if done.exists():
                break
            fcntl.flock(lock, fcntl.LOCK_UN)  # its last user deleted it meanwhile: again
        try:
            yield
        finally:
            if not keep and _try_lock(lock, fcntl.LOCK_EX):  # the last user deletes it
                done.unlink(missing_ok=True)
                _delete(pafs.LocalFileSystem(), str(local))
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def on_this_node(*paths: str | None) -> Iterator[None]:
    """Inside a Ray worker: make the driver's staged inputs among `paths` exist on this node.

    A job stages an input URI at `staging_path(uri)`, the same path on every node (same
    user and R2PS_STAGING_DIR), and passes that path to its workers. A worker on the
    driver's node finds the driver's copy and shares it; a worker on another node
    downloads its own copy there, which the last user on that node deletes when done.
    A path inside a staged folder stages that folder. A path in the pipeline's local mirror
    of a URI `--out` (`mirror_path`) fetches its stage's folder, uploaded when that stage
    finished, to the same path. Paths that are not staging paths (local, or on a shared
    disk) are left alone.
    Enter it for as long as the worker reads them (a training run, an actor's life).
    """
    uris = sorted({uri for p in paths if p and (uri := _uri_of(p, "in", depth=2))})
    for p in paths:
        if p and (uri := _uri_of(p, "out", depth=3)):
            _fetch_mirror_part(uri)
    with contextlib.ExitStack() as stack:
        for uri in uris:
            stack.enter_context(local_input(uri))
        yield


def _fetch_mirror_part(uri: str) -> None:
    """Download the finished pipeline stage `uri` (`<out>/<stage>`) to the mirror path its
    paths name, on a node that lacks it (the driver's own mirror, which has no lock file,
    is used as it is). Kept for later stages."""
    out, _, stage = uri.rpartition("/")
    local = mirror_path(out) / stage
    if local.exists() and not local.with_name(local.name + ".lock").exists():
        return  # the driver's node: its mirror
    with _shared_copy(uri, local, keep=True):
        pass


def input_file(path: str | os.PathLike) -> str | pafs.NativeFile:
    """A file a job staged, for reading on this node (a Ray task's): the local copy when
    this node has it, else the file opened straight from its URI. Any other path is
    returned as it is, so a missing one fails as it always would.
    """
    if Path(path).exists() or (uri := source_uri(path) or _uri_of(path, "out")) is None:
        return str(path)
    fs, inner = filesystem(uri)
    return fs.open_input_file(inner)


def mirror_path(uri: str) -> Path:
    """This machine's working copy of output `uri` for a job that uploads part by part
    (the pipeline, a stage at a time): the same path on every run, so what the job records
    about its paths (the pipeline's fingerprints) stays the same across restarts."""
    return staging_root() / "out" / _local_name(uri)


def upload_file(local: str | Path, uri: str) -> None:
    """Copy one small local file to `uri` (a single object: nothing to replace by parts)."""
    fs, path = filesystem(uri)
    fs.create_dir(path.rpartition("/")[0])
    with open(local, "rb") as src, fs.open_output_stream(path) as dest:
        shutil.copyfileobj(src, dest)


@contextlib.contextmanager
def local_output(path: str, resume: bool = False, partial: bool = False) -> Iterator[str]:
    """A local folder to write `path` into: `path` itself when local, else a fresh folder
    uploaded to the URI when the block succeeds (nothing is uploaded when it raises).

    `resume`: the folder starts as a download of what the URI holds (when anything).
    `partial`: what the block wrote is uploaded even when it raises (then the error goes
    on), for a job that writes its output part by part, each file whole (the evaluation:
    its quality table is kept when the efficiency table fails).
    """
    if not is_uri(path):
        yield path
        return
    staging_root().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="out-", dir=staging_root()))
    try:
        local = tmp / _local_name(path)
        if not (resume and download(path, local)):
            local.mkdir(parents=True)
        try:
            yield str(local)
        except Exception:
            if partial and any(local.iterdir()):
                log.warning("the job failed: uploading what it finished to %s", path)
                upload(local, path)
            raise
        upload(local, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged(
    cfg: T,
    inputs: Sequence[str] = (),
    outputs: Sequence[str] = (),
    updates: Sequence[str] = (),
    partial_outputs: Sequence[str] = (),
) -> Iterator[T]:
    """`cfg` (a dataclass) with each URI in the named fields replaced by a local path.

    `inputs` are downloaded, `outputs` uploaded when the block succeeds, `updates` both,
    `partial_outputs` uploaded also when it fails (`local_output(partial=True)`). A field
    may hold a path or a list of paths; local paths and empty settings are left as they
    are, and a URI named in two fields is staged once.
    """
    kinds = (
        (inputs, local_input),
        (updates, functools.partial(local_output, resume=True)),
        (outputs, local_output),
        (partial_outputs, functools.partial(local_output, partial=True)),
    )
    with contextlib.ExitStack() as stack:
        local: dict[str, str] = {}
        read = {v for name in inputs for v in _values(getattr(cfg, name)) if is_uri(v)}
        outs = (*outputs, *updates, *partial_outputs)
        written = {v for name in outs for v in _values(getattr(cfg, name))}
        if both := sorted(read & written):
            raise ValueError(f"{', '.join(both)}: both an input and an output of this job")

        def swap(value: str, stage) -> str:
            if is_uri(value) and value not in local:
                local[value] = stack.enter_context(stage(value))
            return local.get(value, value)

        changes: dict[str, str | list[str]] = {}
        for names, stage in kinds:
            for name in names:
                value = getattr(cfg, name)
                if isinstance(value, list):
                    changes[name] = [swap(v, stage) for v in value]
                else:
                    changes[name] = swap(value, stage)
        yield dataclasses.replace(cfg, **changes)


def _values(value: str | list[str]) -> list[str]:
    return list(value) if isinstance(value, list) else [value]
