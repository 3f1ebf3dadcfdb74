"""Objects at plain paths, ``file://`` and ``s3://`` URIs: list, read, write, commit.

Every location in the system is a URI. A plain path (relative or absolute) is turned
into a ``file://`` URI by :func:`normalize_uri`, so workers on other machines or in
other working directories see the same location.

Writes are atomic from a reader's point of view:

* local files are written under a hidden temporary name in the destination folder
  (``.<name>.tmp-<random>``), flushed, then renamed onto the final name;
* S3 objects are staged in a local temporary file and uploaded with one PUT (or one
  multipart upload, which S3 makes visible only when it completes). A failed write
  uploads nothing.

Multi-object outputs (a rendered track, a job's output) are committed by writing a
marker last (``metadata.yaml`` for a track, ``summary.json`` for a job); readers treat
an output without its marker as absent.

S3 endpoint, region and credentials come from the environment and the standard AWS
configuration (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, instance roles, ...), never from
job configs. ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` selects an S3-compatible
server (MinIO, Ceph, a test server on loopback).
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import os
import posixpath
import re
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from typing import IO, Any

import fsspec

from sepcore.errors import StorageError

TMP_MARK = ".tmp-"


def normalize_uri(uri: str) -> str:
    """Return ``uri`` as ``scheme://...``; plain paths become absolute ``file://`` URIs.

    Trailing slashes are dropped (except the root ``file:///``); ``file://`` paths are
    normalised (``//``, ``.`` and ``..`` collapse) and must be absolute; ``s3://``
    URIs must name a bucket.
    """
    if not isinstance(uri, str) or not uri:
        raise StorageError(str(uri), "empty location")
    if "://" not in uri:
        return "file:///" + os.path.abspath(os.path.expanduser(uri)).lstrip("/")
    sch, rest = uri.split("://", 1)
    if sch == "file":
        if not rest.startswith("/"):
            raise StorageError(uri, "a file:// URI needs an absolute path (file:///...)")
        return "file:///" + posixpath.normpath(rest).lstrip("/")
    if sch == "s3":
        rest = rest.rstrip("/")
        if not rest or rest.startswith("/"):
            raise StorageError(uri, "an s3:// URI needs a bucket (s3://bucket/key)")
        return "s3://" + rest
    raise StorageError(uri, f"unsupported scheme '{sch}' (use a path, file:// or s3://)")


def scheme(uri: str) -> str:
    return normalize_uri(uri).split("://", 1)[0]


def is_local(uri: str) -> bool:
    return scheme(uri) == "file"


def local_path(uri: str) -> str:
    """The filesystem path of a ``file://`` URI (or plain path)."""
    norm = normalize_uri(uri)
    if not norm.startswith("file://"):
        raise StorageError(uri, "not a local path")
    return norm[len("file://") :]


def _split(uri: str) -> tuple[str, str]:
    """``(scheme, path)`` of a normalised URI: ``("file", "/a/b")``, ``("s3", "bucket/key")``."""
    sch, rest = normalize_uri(uri).split("://", 1)
    return sch, rest


def join(uri: str, *parts: str) -> str:
    """``uri`` with ``parts`` appended as path components."""
    base = normalize_uri(uri)
    clean = [p.strip("/") for p in parts if p and p.strip("/")]
    if not clean:
        return base
    sep = "" if base.endswith("/") else "/"  # only the root file:/// ends with "/"
    return normalize_uri(base + sep + "/".join(clean))


def basename(uri: str) -> str:
    """The last path component (the bucket for ``s3://bucket``, ``""`` for ``file:///``)."""
    return _split(uri)[1].rsplit("/", 1)[-1]


def parent(uri: str) -> str:
    """The enclosing folder; ``file:///`` and ``s3://bucket`` are their own parents."""
    sch, path = _split(uri)
    if sch == "file":
        return "file://" + posixpath.dirname(path)
    if "/" not in path:
        return f"s3://{path}"
    return "s3://" + path.rsplit("/", 1)[0]


def s3_options() -> dict[str, Any]:
    """fsspec options for S3, from the environment only (read at every call).

    Directory listings are never cached: other workers write and delete objects, and
    a cached listing would make :func:`exists`, :func:`info` and :func:`list_files`
    answer from a stale view. fsspec caches filesystem instances by these options, so
    a changed endpoint gets a new instance.
    """
    opts: dict[str, Any] = {"use_listings_cache": False}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_url"] = endpoint
    return opts


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it."""
    norm = normalize_uri(uri)
    if norm.startswith("s3://"):
        fs = fsspec.filesystem("s3", **s3_options())
        return fs, norm[len("s3://") :]
    return fsspec.filesystem("file"), local_path(norm)


def _to_uri(prefix_scheme: str, path: str) -> str:
    if prefix_scheme == "file":
        return "file://" + (path if path.startswith("/") else "/" + path)
    return f"{prefix_scheme}://{path}"


def _wrap(uri: str, exc: BaseException) -> StorageError:
    if isinstance(exc, FileNotFoundError):
        return StorageError(uri, "no such object")
    if isinstance(exc, PermissionError):
        return StorageError(uri, f"permission denied ({exc})")
    return StorageError(uri, f"{type(exc).__name__}: {exc}")


def _temporary_name(final_name: str) -> str:
    return f".{final_name}{TMP_MARK}{uuid.uuid4().hex[:12]}"


_TMP_NAME = re.compile(r"^\..+" + re.escape(TMP_MARK) + r"[0-9a-f]{12}$")


def is_temporary(uri_or_name: str) -> bool:
    """True for the temporary names that writes use before they commit."""
    return _TMP_NAME.match(uri_or_name.rsplit("/", 1)[-1]) is not None


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    try:
        return bool(fs.exists(path))
    except Exception as exc:  # network errors, permissions
        raise _wrap(uri, exc) from exc


def _local_files(path: str) -> list[tuple[str, os.stat_result]]:
    """``(path, stat)`` of the regular files below a local ``path``, following links.

    Symbolic links are followed (``stat`` describes the target); broken links and
    link loops are skipped. Each folder is walked once, identified by
    ``(st_dev, st_ino)``, and each file is listed once, under one of its paths:

    * a path that crosses no symbolic link is always listed (hard links stay
      separate files, as they always were);
    * a path that crosses a link is listed only when the file it reaches is not
      listed in place already; of several such paths to one file (or folder), the
      one that crosses the fewest links wins, then the first in name order, compared
      folder by folder.

    So a library that links one album folder twice, or links a song that is also
    present in place, lists that audio once (the ``separate`` job processes it once),
    and a file in place keeps its own name whatever links are added or removed
    around it. A missing ``path`` (or a broken link) lists as empty; a ``path`` that
    is a file lists as itself. Entries that are neither files nor folders (FIFOs,
    sockets, devices) are left out. A folder below ``path`` that cannot be read is
    left out, as it always was; ``path`` itself unreadable raises
    :class:`StorageError`.
    """
    try:
        top = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return []
        raise _wrap(_to_uri("file", path), exc) from exc
    if stat.S_ISREG(top.st_mode):
        return [(path, top)]
    if not stat.S_ISDIR(top.st_mode):
        return []
    # Best-first walk: a path's key (links crossed, path parts) is larger than its
    # folder's, so each folder is first met by its smallest key and walked then.
    heap: list[tuple[int, tuple[str, ...], str]] = [(0, (), path)]
    walked: set[tuple[int, int]] = set()
    plain: list[tuple[str, os.stat_result]] = []
    linked: dict[tuple[int, int], tuple[tuple[int, tuple[str, ...]], str, os.stat_result]] = {}
    while heap:
        links, parts, folder = heapq.heappop(heap)
        try:
            here = os.stat(folder)
            if (here.st_dev, here.st_ino) in walked:
                continue  # met before by a smaller key: a link loop or a second link
            walked.add((here.st_dev, here.st_ino))
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            if not parts and not isinstance(exc, FileNotFoundError | NotADirectoryError):
                raise _wrap(_to_uri("file", folder), exc) from exc
            continue  # deleted while walking, or unreadable below the top (as before)
        for entry in entries:
            try:
                st = entry.stat()  # follows links
            except OSError:
                continue  # a broken link, a link loop, a target we may not read
            crossed = links + entry.is_symlink()
            key = (crossed, (*parts, entry.name))
            if stat.S_ISDIR(st.st_mode):
                heapq.heappush(heap, (crossed, key[1], entry.path))
            elif not stat.S_ISREG(st.st_mode) or is_temporary(entry.name):
                continue  # not a file, or a write in progress
            elif not crossed:
                plain.append((entry.path, st))
            else:
                ident = (st.st_dev, st.st_ino)
                if ident not in linked or key < linked[ident][0]:
                    linked[ident] = (key, entry.path, st)
    listed = {(st.st_dev, st.st_ino) for _, st in plain}
    return plain + [(p, st) for ident, (_, p, st) in linked.items() if ident not in listed]


def _local_version(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns}-{st.st_ino}"


def list_files(uri: str, suffix: str | None = None) -> list[str]:
    """All committed objects below ``uri`` (recursive), sorted, as URIs.

    Temporary objects of writes in progress are never listed. A missing prefix
    lists as empty. Local folders follow symbolic links (files and folders), each
    file listed once; see :func:`_local_files` for which path a file reached twice
    is listed under. Broken links are skipped.
    """
    norm = normalize_uri(uri)
    if is_local(norm):
        found = [p for p, _ in _local_files(local_path(norm))]
    else:
        fs, path = filesystem(norm)
        try:
            found = fs.find(path)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise _wrap(uri, exc) from exc
    sch = scheme(norm)
    out = []
    for p in found:
        if is_temporary(p) or (suffix and not p.endswith(suffix)):
            continue
        out.append(_to_uri(sch, p))
    return sorted(out)


def info(uri: str) -> dict[str, Any]:
    """Size in bytes and a version tag that changes when the object is rewritten.

    The version is the ETag on S3 (it changes with the content), and mtime (ns) plus
    inode number locally: every commit renames a new file onto the name, so
    consecutive versions differ even when the filesystem's clock is coarser than the
    rewrites. A folder or prefix is not an object and raises :class:`StorageError`.
    """
    norm = normalize_uri(uri)
    if is_local(norm):
        try:
            st = os.stat(local_path(norm))
        except OSError as exc:
            raise _wrap(uri, exc) from exc
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(uri, "not a file")
        return {"size": int(st.st_size), "version": _local_version(st)}
    fs, path = filesystem(norm)
    try:
        meta = fs.info(path)
    except Exception as exc:
        raise _wrap(uri, exc) from exc
    if meta.get("type") == "directory":
        raise StorageError(uri, "not an object (a prefix or bucket)")
    version = meta.get("ETag") or meta.get("etag") or meta.get("LastModified", "")
    return {"size": int(meta.get("size") or 0), "version": str(version).strip('"')}


def list_info(uri: str, suffixes: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """:func:`list_files` with each object's :func:`info`, from one listing.

    Rows ``{"uri", "size", "version"}``, sorted by URI; ``suffixes`` filters names
    case-insensitively (``(".wav", ".flac")``). The version is the same tag as
    :func:`info` gives, so either can be compared with the other. Local folders
    follow symbolic links as :func:`list_files` does; a linked file has its target's
    size and version.
    """
    norm = normalize_uri(uri)
    sch = scheme(norm)
    wanted = tuple(s.lower() for s in suffixes) if suffixes else None

    def keep(p: str) -> bool:
        return not is_temporary(p) and not (wanted and not p.lower().endswith(wanted))

    if is_local(norm):
        return sorted(
            (
                {"uri": _to_uri(sch, p), "size": int(st.st_size), "version": _local_version(st)}
                for p, st in _local_files(local_path(norm))
                if keep(p)
            ),
            key=lambda r: r["uri"],
        )
    fs, path = filesystem(norm)
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        return []
    except Exception as exc:
        raise _wrap(uri, exc) from exc
    rows = []
    for p, meta in found.items():
        if not keep(p):
            continue
        version = meta.get("ETag") or meta.get("etag") or meta.get("LastModified", "")
        rows.append(
            {
                "uri": _to_uri(sch, p),
                "size": int(meta.get("size") or 0),
                "version": str(version).strip('"'),
            }
        )
    return sorted(rows, key=lambda r: r["uri"])


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        return bytes(fs.cat_file(path))
    except Exception as exc:
        raise _wrap(uri, exc) from exc


def read_text(uri: str) -> str:
    data = read_bytes(uri)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StorageError(uri, f"not UTF-8 text ({exc})") from exc


@contextlib.contextmanager
def open_write(uri: str) -> Iterator[IO[bytes]]:
    """A binary file that becomes visible at ``uri`` only if the block completes.

    On an exception nothing is committed and the temporary data is removed.
    """
    norm = normalize_uri(uri)
    if is_local(norm):
        final = local_path(norm)
        folder = os.path.dirname(final) or "."
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, _temporary_name(os.path.basename(final)))
        try:
            with open(tmp, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise
        return
    fs, path = filesystem(norm)
    with tempfile.NamedTemporaryFile(prefix="sep-upload-", delete=True) as fh:
        yield fh
        fh.flush()
        try:
            fs.put_file(fh.name, path)
        except Exception as exc:
            raise _wrap(uri, exc) from exc


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` atomically."""
    try:
        with open_write(uri) as fh:
            fh.write(data)
    except StorageError:
        raise
    except OSError as exc:
        raise _wrap(uri, exc) from exc


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def upload(local_file: str, uri: str) -> None:
    """Copy a local file to ``uri`` atomically."""
    try:
        src = open(local_file, "rb")
    except OSError as exc:
        raise _wrap(local_file, exc) from exc
    try:
        with src, open_write(uri) as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    except StorageError:
        raise
    except OSError as exc:
        raise _wrap(uri, exc) from exc


def download(uri: str, local_file: str) -> None:
    """Copy ``uri`` to a local file (written atomically too)."""
    fs, path = filesystem(uri)
    target = normalize_uri(local_file)
    try:
        with fs.open(path, "rb") as src, open_write(target) as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    except StorageError:
        raise
    except Exception as exc:
        raise _wrap(uri, exc) from exc


_GLOB_CHARS = re.compile(r"[*?\[]")


def delete(uri: str, recursive: bool = False) -> None:
    """Remove an object (or a whole prefix with ``recursive``); missing is fine.

    On S3 a recursive delete removes the objects only, never the bucket. Names are
    literal: ``*``, ``?`` and ``[`` in a key are not glob patterns.
    """
    norm = normalize_uri(uri)
    fs, path = filesystem(norm)
    try:
        if is_local(norm):
            if fs.exists(path):
                fs.rm(path, recursive=recursive)
            return
        if not recursive:
            fs.rm_file(path)  # DeleteObject: a missing key is not an error
            return
        targets = [p for p in fs.find(path) if p != path]
        if fs.isfile(path):
            targets.append(path)
        # fs.rm() expands glob patterns, so keys that look like one go one by one.
        plain = [p for p in targets if not _GLOB_CHARS.search(p)]
        if plain:
            fs.rm(plain)
        for p in targets:
            if _GLOB_CHARS.search(p):
                fs.rm_file(p)
    except FileNotFoundError:
        return
    except Exception as exc:
        raise _wrap(uri, exc) from exc


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path holding the object's bytes: the file itself when local, else a temp copy."""
    if is_local(uri):
        path = local_path(uri)
        if not os.path.exists(path):
            raise StorageError(uri, "no such object")
        yield path
        return
    suffix = os.path.splitext(basename(uri))[1]
    with tempfile.TemporaryDirectory(prefix="sep-dl-") as tmpdir:
        tmp = os.path.join(tmpdir, "object" + suffix)
        download(uri, tmp)
        yield tmp
