"""sepcore.io.storage on both backends: a local folder and a real S3 server on loopback."""

from __future__ import annotations

import http.server
import inspect
import os
import random
import re
import threading
import time

import pytest
from botocore.exceptions import ClientError

from sepcore.errors import SepError, StorageError
from sepcore.io import storage
from tests.support import s3 as s3test

# ---------------------------------------------------------------- helpers


def _s3_parts(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def raw_names(root: str) -> list[str]:
    """Everything stored below ``root``, hidden and temporary names included.

    Read behind storage's back: ``os.walk`` locally, ``list_objects_v2`` on S3.
    """
    if storage.is_local(root):
        base = storage.local_path(root)
        out = []
        for folder, _dirs, files in os.walk(base):
            out += [os.path.relpath(os.path.join(folder, f), base) for f in files]
        return sorted(out)
    bucket, key = _s3_parts(root)
    prefix = key + "/" if key else ""
    return [k[len(prefix) :] for k in s3test.list_keys(bucket, prefix)]


def raw_put(uri: str, data: bytes) -> None:
    """Store an object without storage (another writer)."""
    if storage.is_local(uri):
        path = storage.local_path(uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
    else:
        bucket, key = _s3_parts(uri)
        s3test.s3_client().put_object(Bucket=bucket, Key=key, Body=data)


def raw_delete(uri: str) -> None:
    if storage.is_local(uri):
        os.remove(storage.local_path(uri))
    else:
        bucket, key = _s3_parts(uri)
        s3test.s3_client().delete_object(Bucket=bucket, Key=key)


def payload(n: int, seed: int = 0) -> bytes:
    """``n`` pseudo-random bytes; different seeds give different data."""
    return random.Random(seed).randbytes(n)


# ---------------------------------------------------------------- URIs (no backend)


def test_normalize_plain_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cwd = os.getcwd()
    assert storage.normalize_uri("x/y.wav") == f"file://{cwd}/x/y.wav"
    assert storage.normalize_uri("./x/../z/") == f"file://{cwd}/z"
    assert storage.normalize_uri("/abs/dir/") == "file:///abs/dir"
    assert storage.normalize_uri("/") == "file:///"
    assert storage.normalize_uri("//srv//x") == "file:///srv/x"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert storage.normalize_uri("~/a.txt") == f"file://{tmp_path}/home/a.txt"


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("file:///a/b", "file:///a/b"),
        ("file:///a/b/", "file:///a/b"),
        ("file:///a//b/./c/../d", "file:///a/b/d"),
        ("file:////a", "file:///a"),
        ("file:///", "file:///"),
        ("s3://bucket", "s3://bucket"),
        ("s3://bucket/", "s3://bucket"),
        ("s3://bucket/key/part/", "s3://bucket/key/part"),
        ("s3://bucket/k.flac", "s3://bucket/k.flac"),
    ],
)
def test_normalize_uris(uri, expected):
    assert storage.normalize_uri(uri) == expected
    assert storage.normalize_uri(expected) == expected  # idempotent


@pytest.mark.parametrize(
    "uri",
    ["gs://bucket/key", "http://host/x", "s3a://bucket/key", "S3://bucket/key", "hdfs:///x"],
)
def test_unsupported_scheme_names_the_uri(uri):
    with pytest.raises(StorageError) as err:
        storage.normalize_uri(uri)
    assert uri in str(err.value)
    assert err.value.uri == uri
    # Every operation refuses it the same way.
    for op in (storage.read_bytes, storage.exists, storage.list_files, storage.info):
        with pytest.raises(StorageError, match=re.escape(uri)):
            op(uri)
    with pytest.raises(StorageError, match="unsupported scheme"):
        storage.write_bytes(uri, b"x")


@pytest.mark.parametrize("uri", ["", "file://relative/path", "s3://", "s3:///key"])
def test_invalid_locations(uri):
    with pytest.raises(StorageError) as err:
        storage.normalize_uri(uri)
    assert isinstance(err.value, SepError)
    if uri:
        assert uri in str(err.value)


@pytest.mark.parametrize(
    "base, parts, expected",
    [
        ("s3://b", ("a", "c.txt"), "s3://b/a/c.txt"),
        ("s3://b/", ("/a/", "c/"), "s3://b/a/c"),
        ("s3://b/k", ("", "x/y"), "s3://b/k/x/y"),
        ("s3://b/k", (), "s3://b/k"),
        ("file:///", ("x",), "file:///x"),
        ("file:///data/", ("a", "b.wav"), "file:///data/a/b.wav"),
        ("/data", ("a",), "file:///data/a"),
    ],
)
def test_join(base, parts, expected):
    assert storage.join(base, *parts) == expected


@pytest.mark.parametrize(
    "uri, base, parent",
    [
        ("s3://b/a/c.txt", "c.txt", "s3://b/a"),
        ("s3://b/a/", "a", "s3://b"),
        ("s3://b", "b", "s3://b"),
        ("file:///data/a/b.wav", "b.wav", "file:///data/a"),
        ("file:///data", "data", "file:///"),
        ("file:///", "", "file:///"),
        ("/data/x.mid", "x.mid", "file:///data"),
    ],
)
def test_basename_and_parent(uri, base, parent):
    assert storage.basename(uri) == base
    assert storage.parent(uri) == parent


@pytest.mark.parametrize("base", ["s3://b", "s3://b/k", "file:///", "file:///d/e", "/tmp"])
def test_parent_inverts_join(base):
    child = storage.join(base, "leaf.txt")
    assert storage.basename(child) == "leaf.txt"
    assert storage.parent(child) == storage.normalize_uri(base)


def test_is_temporary_matches_only_write_temporaries():
    assert not storage.is_temporary("song.tmp-1.wav")
    assert not storage.is_temporary("s3://b/take.tmp-final.flac")
    assert not storage.is_temporary(".hidden.wav")
    assert storage.is_temporary("s3://b/d/.x.wav" + storage.TMP_MARK + "0123456789ab")


# ---------------------------------------------------------------- both backends


def test_round_trip_bytes_and_text(storage_root):
    data = bytes(range(256)) * 3
    uri = storage.join(storage_root, "deep/er/obj.bin")
    storage.write_bytes(uri, data)
    assert storage.read_bytes(uri) == data
    text = "Grüße, ♫ and\nnew lines\n"
    turi = storage.join(storage_root, "notes.txt")
    storage.write_text(turi, text)
    assert storage.read_text(turi) == text
    assert storage.read_bytes(turi) == text.encode("utf-8")
    storage.write_text(turi, "shorter")
    assert storage.read_text(turi) == "shorter"


def test_multi_megabyte_round_trip(storage_root):
    data = payload(6 * 1024 * 1024 + 123)
    uri = storage.join(storage_root, "big.bin")
    storage.write_bytes(uri, data)
    assert storage.info(uri)["size"] == len(data)
    assert storage.read_bytes(uri) == data


def test_read_text_rejects_non_utf8(storage_root):
    uri = storage.join(storage_root, "latin1.txt")
    storage.write_bytes(uri, "café".encode("latin-1"))
    with pytest.raises(StorageError, match="UTF-8") as err:
        storage.read_text(uri)
    assert uri in str(err.value)


def test_missing_object_errors_name_the_uri(storage_root):
    uri = storage.join(storage_root, "nope/missing.flac")
    for op in (storage.read_bytes, storage.read_text, storage.info):
        with pytest.raises(StorageError) as err:
            op(uri)
        assert uri in str(err.value)
        assert err.value.uri == uri
    with pytest.raises(StorageError) as err, storage.local_copy(uri):
        pass
    assert uri in str(err.value)


def test_list_files(storage_root):
    names = ["c.txt", "a/1.txt", "a/b/2.flac", "a/b/c/3.txt", "ab/4.txt", "z.flac"]
    for i, name in enumerate(names):
        storage.write_bytes(storage.join(storage_root, name), b"x" * i)
    everything = storage.list_files(storage_root)
    assert everything == sorted(storage.join(storage_root, n) for n in names)
    assert all(u.startswith(storage_root + "/") for u in everything)
    assert storage.list_files(storage_root, suffix=".txt") == sorted(
        storage.join(storage_root, n) for n in names if n.endswith(".txt")
    )
    # A prefix is a folder: "a" does not take in "ab/...".
    assert storage.list_files(storage.join(storage_root, "a")) == [
        storage.join(storage_root, n) for n in ["a/1.txt", "a/b/2.flac", "a/b/c/3.txt"]
    ]
    assert storage.list_files(storage.join(storage_root, "a/b"), suffix=".flac") == [
        storage.join(storage_root, "a/b/2.flac")
    ]
    assert storage.list_files(storage.join(storage_root, "missing")) == []
    assert storage.list_files(storage.join(storage_root, "a/missing/deeper")) == []


def test_temporary_names_are_never_listed(storage_root):
    storage.write_bytes(storage.join(storage_root, "d/real.wav"), b"ok")
    tmp = storage.join(storage_root, "d/.real.wav" + storage.TMP_MARK + "0123456789ab")
    raw_put(tmp, b"half")
    assert "d/.real.wav.tmp-0123456789ab" in raw_names(storage_root)
    assert storage.list_files(storage_root) == [storage.join(storage_root, "d/real.wav")]
    assert storage.list_files(storage.join(storage_root, "d"), suffix="ab") == []


def test_exists_and_info(storage_root):
    uri = storage.join(storage_root, "x/obj.bin")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"a" * 10)
    assert storage.exists(uri)
    first = storage.info(uri)
    assert first["size"] == 10
    assert isinstance(first["version"], str) and first["version"]
    storage.write_bytes(uri, b"b" * 10)  # same size, new content
    second = storage.info(uri)
    assert second["size"] == 10
    assert second["version"] != first["version"]
    assert storage.info(uri) == second  # stable while unchanged
    storage.write_bytes(uri, b"c" * 12345)
    assert storage.info(uri)["size"] == 12345


def test_info_of_a_folder_is_an_error(storage_root):
    storage.write_bytes(storage.join(storage_root, "dir/a.txt"), b"a")
    folder = storage.join(storage_root, "dir")
    with pytest.raises(StorageError) as err:
        storage.info(folder)
    assert folder in str(err.value)


# ---------------------------------------------------------------- symbolic links (local)


def _tree(root, files: dict[str, bytes], links: dict[str, str]) -> str:
    """Files and symbolic links (name -> target, relative to the link) below ``root``."""
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    for name, target in links.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / name)
    return storage.normalize_uri(str(root / "lib"))


def _names(root: str, uris: list[str]) -> list[str]:
    return [u[len(root) + 1 :] for u in uris]


def test_local_listing_follows_links_to_folders_and_files(tmp_path):
    lib = _tree(
        tmp_path,
        {"lib/in place.wav": b"a", "elsewhere/album/1.wav": b"bb", "elsewhere/album/cd/2.flac": b"ccc",
         "elsewhere/solo.wav": b"dddd"},
        {"lib/album": "../elsewhere/album", "lib/solo.wav": "../elsewhere/solo.wav"},
    )  # fmt: skip
    expected = ["album/1.wav", "album/cd/2.flac", "in place.wav", "solo.wav"]
    assert _names(lib, storage.list_files(lib)) == expected
    assert _names(lib, storage.list_files(lib, suffix=".flac")) == ["album/cd/2.flac"]
    rows = storage.list_info(lib)
    assert _names(lib, [r["uri"] for r in rows]) == expected
    assert [r["size"] for r in rows] == [2, 3, 1, 4]  # the targets' sizes
    for row in rows:  # the same version tag as info(), through the link
        assert {"uri": row["uri"], **storage.info(row["uri"])} == row
    linked = storage.join(lib, "album")  # a listing that starts at a link
    assert _names(linked, storage.list_files(linked)) == ["1.wav", "cd/2.flac"]
    assert _names(lib, [r["uri"] for r in storage.list_info(lib, (".WAV",))]) == [
        "album/1.wav", "in place.wav", "solo.wav"
    ]  # fmt: skip


def test_local_listing_survives_link_loops(tmp_path):
    lib = _tree(
        tmp_path,
        {"lib/a/1.wav": b"1", "lib/b/2.wav": b"2"},
        {"lib/a/up": "..", "lib/a/top": str(tmp_path / "lib"), "lib/b/self": "self",
         "lib/b/ping": "pong", "lib/b/pong": "ping"},
    )  # fmt: skip
    assert _names(lib, storage.list_files(lib)) == ["a/1.wav", "b/2.wav"]
    assert _names(lib, [r["uri"] for r in storage.list_info(lib)]) == ["a/1.wav", "b/2.wav"]


def test_local_listing_lists_a_file_reached_twice_once(tmp_path):
    lib = _tree(
        tmp_path,
        {"lib/real/x.wav": b"x", "elsewhere/album/y.wav": b"y", "elsewhere/album/sub/z.wav": b"z"},
        {"lib/mirror": "../elsewhere/album", "lib/album": "../elsewhere/album",
         "lib/deep/er/album": "../../../elsewhere/album", "lib/best/x.wav": "../real/x.wav",
         "lib/best/y.wav": "../../elsewhere/album/y.wav", "lib/a_real": "real"},
    )  # fmt: skip
    os.link(tmp_path / "lib/real/x.wav", tmp_path / "lib/real/hard.wav")
    # A file in place keeps its own path (hard links stay two files); of the paths
    # through links, the one with the fewest links wins, then the first by name.
    expected = ["album/sub/z.wav", "album/y.wav", "real/hard.wav", "real/x.wav"]
    assert _names(lib, storage.list_files(lib)) == expected
    assert _names(lib, [r["uri"] for r in storage.list_info(lib)]) == expected


def test_local_listing_skips_broken_links(tmp_path):
    lib = _tree(
        tmp_path,
        {"lib/ok.wav": b"ok"},
        {"lib/gone.wav": "../nowhere.wav", "lib/gone folder": "../nowhere", "dangling": "nowhere"},
    )
    assert _names(lib, storage.list_files(lib)) == ["ok.wav"]
    assert _names(lib, [r["uri"] for r in storage.list_info(lib)]) == ["ok.wav"]
    dangling = storage.normalize_uri(str(tmp_path / "dangling"))
    assert storage.list_files(dangling) == [] and storage.list_info(dangling) == []


def test_other_writers_are_seen_at_once(storage_root):
    """No listing cache: objects written or removed elsewhere show up immediately."""
    uri = storage.join(storage_root, "shared/new.txt")
    storage.write_bytes(storage.join(storage_root, "shared/old.txt"), b"old")
    before = storage.list_files(storage_root)  # would fill a listing cache
    assert not storage.exists(uri)
    raw_put(uri, b"from elsewhere")
    assert storage.exists(uri)
    assert storage.info(uri)["size"] == len(b"from elsewhere")
    assert storage.read_bytes(uri) == b"from elsewhere"
    assert storage.list_files(storage_root) == sorted([*before, uri])
    raw_delete(uri)
    assert not storage.exists(uri)
    assert storage.list_files(storage_root) == before
    with pytest.raises(StorageError):
        storage.info(uri)


def test_delete_single(storage_root):
    keep = storage.join(storage_root, "a/keep.txt")
    gone = storage.join(storage_root, "a/gone.txt")
    storage.write_bytes(keep, b"k")
    storage.write_bytes(gone, b"g")
    storage.delete(gone)
    assert not storage.exists(gone)
    assert storage.list_files(storage_root) == [keep]
    storage.delete(gone)  # missing is fine
    storage.delete(storage.join(storage_root, "never/was.txt"))
    assert storage.read_bytes(keep) == b"k"


def test_delete_takes_names_literally(storage_root):
    """``[1]`` in a name is not a glob class that matches ``x1.txt``."""
    odd = storage.join(storage_root, "x[1].txt")
    plain = storage.join(storage_root, "x1.txt")
    star = storage.join(storage_root, "d/*.txt")
    for uri in (odd, plain, star, storage.join(storage_root, "d/y.txt")):
        storage.write_bytes(uri, b"v")
    storage.delete(odd)
    assert not storage.exists(odd)
    assert storage.exists(plain)
    storage.delete(star)
    assert storage.list_files(storage_root) == sorted(
        [plain, storage.join(storage_root, "d/y.txt")]
    )


def test_delete_recursive(storage_root):
    names = ["run/a.txt", "run/sub/b.txt", "run/sub/deep/c.txt", "runner/keep.txt", "top.txt"]
    for name in names:
        storage.write_bytes(storage.join(storage_root, name), name.encode())
    storage.delete(storage.join(storage_root, "run"), recursive=True)
    assert storage.list_files(storage_root) == [
        storage.join(storage_root, "runner/keep.txt"),
        storage.join(storage_root, "top.txt"),
    ]
    assert not storage.exists(storage.join(storage_root, "run/sub/b.txt"))
    storage.delete(storage.join(storage_root, "run"), recursive=True)  # missing is fine
    assert storage.read_bytes(storage.join(storage_root, "runner/keep.txt")) == b"runner/keep.txt"


def test_recursive_delete_of_a_bucket_keeps_the_bucket(s3_bucket):
    for name in ("a.txt", "b/c.txt"):
        storage.write_bytes(storage.join(s3_bucket, name), b"x")
    storage.delete(s3_bucket, recursive=True)
    assert s3test.list_keys(s3_bucket) == []
    storage.write_bytes(storage.join(s3_bucket, "again.txt"), b"y")  # bucket still there
    assert storage.list_files(s3_bucket) == [storage.join(s3_bucket, "again.txt")]


def test_upload_and_download(storage_root, tmp_path):
    src = tmp_path / "src" / "in.bin"
    src.parent.mkdir()
    data = payload(3 * 1024 * 1024 + 7, seed=3)
    src.write_bytes(data)
    uri = storage.join(storage_root, "up/loaded.bin")
    storage.upload(str(src), uri)
    assert storage.read_bytes(uri) == data
    target = tmp_path / "dl" / "nested" / "out.bin"
    storage.download(uri, str(target))
    assert target.read_bytes() == data
    assert sorted(os.listdir(target.parent)) == ["out.bin"]  # no temporary left behind


def test_upload_and_download_errors(storage_root, tmp_path):
    missing_local = str(tmp_path / "no-such-file.bin")
    with pytest.raises(StorageError) as err:
        storage.upload(missing_local, storage.join(storage_root, "x.bin"))
    assert missing_local in str(err.value)
    assert not storage.exists(storage.join(storage_root, "x.bin"))
    missing = storage.join(storage_root, "absent.bin")
    with pytest.raises(StorageError) as err:
        storage.download(missing, str(tmp_path / "out.bin"))
    assert missing in str(err.value)
    assert not (tmp_path / "out.bin").exists()


def test_local_copy(storage_root):
    uri = storage.join(storage_root, "audio/mix.flac")
    data = payload(200_000, seed=5)
    storage.write_bytes(uri, data)
    with storage.local_copy(uri) as path:
        assert os.path.isfile(path)
        assert path.endswith(".flac")
        with open(path, "rb") as fh:
            assert fh.read() == data
        if storage.is_local(uri):
            assert path == storage.local_path(uri)
    if storage.is_local(uri):
        assert os.path.exists(path)  # the object itself, left alone
    else:
        assert not os.path.exists(path)  # the temporary copy is cleaned up


# ---------------------------------------------------------------- atomic commit


def test_open_write_is_invisible_until_the_block_ends(storage_root):
    uri = storage.join(storage_root, "out/result.bin")
    data = payload(1_000_000, seed=1)
    with storage.open_write(uri) as fh:
        fh.write(data[:400_000])
        fh.flush()
        assert not storage.exists(uri)
        assert uri not in storage.list_files(storage_root)
        assert storage.list_files(storage_root) == []
        with pytest.raises(StorageError):
            storage.read_bytes(uri)
        fh.write(data[400_000:])
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == data
    assert storage.list_files(storage_root) == [uri]
    assert raw_names(storage_root) == ["out/result.bin"]


def test_open_write_keeps_the_old_version_visible_while_writing(storage_root):
    uri = storage.join(storage_root, "state.json")
    storage.write_text(uri, '{"v": 1}')
    with storage.open_write(uri) as fh:
        fh.write(b'{"v": 2, "partial": ')
        fh.flush()
        assert storage.read_text(uri) == '{"v": 1}'
        assert storage.list_files(storage_root) == [uri]
        fh.write(b"false}")
    assert storage.read_text(uri) == '{"v": 2, "partial": false}'


def _assert_no_leftovers(root: str, expected: list[str]) -> None:
    assert raw_names(root) == expected
    if storage.is_local(root):
        # os.walk above sees hidden files too; check the folder itself as well.
        base = storage.local_path(root)
        for folder, _dirs, files in os.walk(base):
            assert not [f for f in files if storage.TMP_MARK in f], (folder, files)
    else:
        assert s3test.list_keys(root) == [
            storage.join(root, e).removeprefix("s3://").split("/", 1)[1] for e in expected
        ]
        assert s3test.list_multipart_uploads(root) == []


def test_failed_write_leaves_nothing(storage_root):
    uri = storage.join(storage_root, "out/broken.bin")
    with pytest.raises(RuntimeError, match="boom"):
        with storage.open_write(uri) as fh:
            fh.write(payload(500_000))
            fh.flush()
            raise RuntimeError("boom")
    assert not storage.exists(uri)
    assert storage.list_files(storage_root) == []
    with pytest.raises(StorageError):
        storage.read_bytes(uri)
    _assert_no_leftovers(storage_root, [])
    if storage.is_local(uri):
        assert os.listdir(os.path.dirname(storage.local_path(uri))) == []


def test_failed_overwrite_keeps_the_old_object(storage_root):
    uri = storage.join(storage_root, "model.ckpt")
    storage.write_bytes(uri, b"good")
    with pytest.raises(KeyboardInterrupt):
        with storage.open_write(uri) as fh:
            fh.write(b"half-written garbage")
            raise KeyboardInterrupt
    assert storage.read_bytes(uri) == b"good"
    _assert_no_leftovers(storage_root, ["model.ckpt"])


def test_concurrent_reader_never_sees_a_partial_object(storage_root):
    uri = storage.join(storage_root, "stream/big.bin")
    chunks = [payload(32 * 1024, seed=i) for i in range(120)]
    full = b"".join(chunks)
    stop = threading.Event()
    body_done = threading.Event()  # set inside the block, before the commit starts
    cond = threading.Condition()
    state = {"polls": 0, "misses_while_writing": 0}
    seen: list[int] = []  # lengths of every successful read
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            writing = not body_done.is_set()
            try:
                got = storage.read_bytes(uri)
            except StorageError:
                if writing:
                    state["misses_while_writing"] += 1
                    listed = storage.list_files(storage_root)
                    present = storage.exists(uri)
                    if (listed or present) and not body_done.is_set():
                        problems.append(f"visible before commit: {listed} {present}")
            except BaseException as exc:  # pragma: no cover - reported below
                problems.append(repr(exc))
            else:
                seen.append(len(got))
                if got != full:
                    problems.append(f"partial read: {len(got)} of {len(full)} bytes")
            with cond:
                state["polls"] += 1
                cond.notify_all()

    def wait_for_fresh_polls() -> None:
        # Two more polls: at least one began after the data written so far.
        with cond:
            target = state["polls"] + 2
            assert cond.wait_for(lambda: state["polls"] >= target, timeout=10), "reader stalled"

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        with storage.open_write(uri) as fh:
            for i, chunk in enumerate(chunks):
                fh.write(chunk)
                if i % 10 == 9:
                    fh.flush()
                    wait_for_fresh_polls()
            body_done.set()
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            wait_for_fresh_polls()
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not problems, problems[:5]
    assert state["misses_while_writing"] >= 12  # it really polled during the write
    assert seen, "the committed object was never read"
    assert set(seen) == {len(full)}


# ---------------------------------------------------------------- S3 endpoint


class _Recorder(http.server.BaseHTTPRequestHandler):
    """An HTTP server that answers every request 404 and remembers it."""

    requests: list[tuple[str, str]] = []

    def _answer(self) -> None:
        self.requests.append((self.command, self.path))
        body = (
            b""
            if self.command == "HEAD"
            else (
                b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>NoSuchKey</Code>"
                b"<Message>recorded</Message></Error>"
            )
        )
        self.send_response(404)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


def test_endpoint_comes_from_the_environment_at_call_time(s3_bucket, s3_server):
    uri = storage.join(s3_bucket, "where.txt")
    storage.write_text(uri, "on the test server")
    assert storage.s3_options()["endpoint_url"] == s3_server
    bucket = s3test.bucket_of(s3_bucket)

    _Recorder.requests = []
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    saved = os.environ["AWS_ENDPOINT_URL_S3"]
    try:
        # Only the environment changes: no argument, no config, no cache clearing.
        os.environ["AWS_ENDPOINT_URL_S3"] = f"http://127.0.0.1:{other.server_address[1]}"
        assert not storage.exists(uri)
        assert any(f"/{bucket}/where.txt" in path for _m, path in _Recorder.requests)
    finally:
        os.environ["AWS_ENDPOINT_URL_S3"] = saved
        other.shutdown()
        other.server_close()
    assert storage.read_text(uri) == "on the test server"


def test_s3_options_read_only_the_environment(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert "endpoint_url" not in storage.s3_options()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert storage.s3_options()["endpoint_url"] == "http://127.0.0.1:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")  # the S3 one wins
    assert storage.s3_options()["endpoint_url"] == "http://127.0.0.1:2"
    assert storage.s3_options()["use_listings_cache"] is False
    # No storage function takes an endpoint (or any connection setting) as an argument.
    for name, func in inspect.getmembers(storage, inspect.isfunction):
        if func.__module__ == storage.__name__:
            params = inspect.signature(func).parameters
            assert not [p for p in params if "endpoint" in p or "region" in p], name


def test_s3_environment_is_restored(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "someone-elses")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    before = dict(os.environ)
    with s3test.s3_environment(s3_server):
        assert os.environ["AWS_ENDPOINT_URL"] == s3_server
        assert os.environ["AWS_ENDPOINT_URL_S3"] == s3_server
        assert os.environ["AWS_DEFAULT_REGION"] == "us-east-1"
        assert "AWS_PROFILE" not in os.environ
        with s3test.temporary_bucket() as bucket:
            storage.write_bytes(storage.join(bucket, "k"), b"v")
            assert s3test.list_keys(bucket) == ["k"]
        with pytest.raises(ClientError, match="NoSuchBucket"):  # removed on exit
            s3test.list_keys(bucket)
    assert dict(os.environ) == before
