"""A real S3 server on loopback, and the environment that points storage at it.

:class:`S3Server` runs moto's server mode in a thread: an HTTP server on
``127.0.0.1`` that speaks the S3 protocol. Requests go through sockets, signing,
botocore and s3fs exactly as with a real S3-compatible server (MinIO, Ceph), and
other processes (Ray workers) started with the same environment reach it too.

:func:`s3_environment` sets what :mod:`sepcore.io.storage` reads — the endpoint
(``AWS_ENDPOINT_URL`` and ``AWS_ENDPOINT_URL_S3``), fake credentials, the region —
isolates the process from the user's AWS configuration, and puts everything back on
exit. fsspec's cached filesystem instances are dropped on entry and exit, so no
instance made for another endpoint or other credentials is reused (see
:func:`s3_environment` for the one exception)::

    with S3Server() as server, s3_environment(server.endpoint_url):
        with temporary_bucket() as root:  # "s3://test-..."
            storage.write_text(storage.join(root, "a.txt"), "hello")

Or all at once: ``with local_s3() as root: ...``.

moto keeps its state per process: two servers started in one process share buckets.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any

ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"
REGION = "us-east-1"

_LOOPBACK = ("127.0.0.1", "localhost")


class S3Server:
    """moto's S3 server on loopback, in a background thread of this process.

    ``port=0`` picks a free port; :attr:`endpoint_url` is known once started.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = port
        self._server: Any = None
        self._endpoint: str | None = None

    @property
    def endpoint_url(self) -> str:
        if self._endpoint is None:
            raise RuntimeError("the S3 server is not running (call start() first)")
        return self._endpoint

    def start(self) -> str:
        """Start the server; returns its endpoint URL (``http://127.0.0.1:<port>``)."""
        if self._endpoint is not None:
            return self._endpoint
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request at INFO; keep test output readable.
        werkzeug_log = logging.getLogger("werkzeug")
        if werkzeug_log.level == logging.NOTSET:
            werkzeug_log.setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self._endpoint = f"http://{host}:{port}"
        return self._endpoint

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        self._server = None
        self._endpoint = None

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def environment_for(endpoint_url: str) -> dict[str, str | None]:
    """The variables :func:`s3_environment` sets (``None``: removed)."""
    no_proxy = [
        p for p in (os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or "").split(",") if p
    ]
    no_proxy += [h for h in _LOOPBACK if h not in no_proxy]
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ENDPOINT_URL_S3": endpoint_url,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        # Nothing from the user's AWS setup: no profile, no session token, no config
        # files (which may name endpoints), no instance-metadata probes.
        "AWS_SESSION_TOKEN": None,
        "AWS_SECURITY_TOKEN": None,
        "AWS_PROFILE": None,
        "AWS_DEFAULT_PROFILE": None,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        # A proxy from the environment must not intercept loopback requests.
        "NO_PROXY": ",".join(no_proxy),
        "no_proxy": ",".join(no_proxy),
    }


def clear_filesystem_caches() -> None:
    """Drop fsspec's cached filesystem instances (S3 and the generic cache)."""
    import fsspec

    with contextlib.suppress(ImportError):
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
    fsspec.AbstractFileSystem.clear_instance_cache()


# S3 filesystem instances made inside s3_environment(), kept out of fsspec's cache
# between blocks, by the exact environment they were made in. Making one costs about
# 0.3 s (botocore loads the S3 model), once per test without this.
_parked: dict[tuple[tuple[str, str | None], ...], dict[Any, Any]] = {}


def _s3_instance_cache() -> dict[Any, Any] | None:
    try:
        import s3fs
    except ImportError:  # pragma: no cover - s3fs is a dependency
        return None
    return s3fs.S3FileSystem._cache


@contextlib.contextmanager
def s3_environment(endpoint_url: str) -> Iterator[dict[str, str | None]]:
    """Point :mod:`sepcore.io.storage` (and boto3) at ``endpoint_url`` inside the block.

    Yields the variables set; the previous environment is restored on exit. fsspec's
    cached filesystems are cleared on entry and on exit, so nothing made for another
    endpoint or other credentials is used inside, and nothing made inside is used
    after. The only exception: S3 filesystems made inside a block with exactly the
    same environment (same endpoint, same fake credentials) come back in the next
    such block, as storage would only make an identical one again.
    """
    wanted = environment_for(endpoint_url)
    key = tuple(sorted(wanted.items()))
    saved = {name: os.environ.get(name) for name in wanted}
    clear_filesystem_caches()
    cache = _s3_instance_cache()
    if cache is not None:
        cache.update(_parked.pop(key, {}))
    try:
        _apply(wanted)
        yield wanted
    finally:
        _apply(saved)
        if cache is not None:
            _parked[key] = {
                token: fs
                for token, fs in cache.items()
                if fs.storage_options.get("endpoint_url") == endpoint_url
            }
        clear_filesystem_caches()


def _apply(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _endpoint(endpoint_url: str | None) -> str:
    found = (
        endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )
    if not found:
        # Refuse rather than talk to real AWS from a test helper.
        raise RuntimeError("no S3 endpoint: pass endpoint_url or use s3_environment()")
    return found


def s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client for the test server (``endpoint_url`` or the environment's)."""
    return _client_for(_endpoint(endpoint_url))


@functools.lru_cache(maxsize=8)
def _client_for(endpoint_url: str) -> Any:
    # Everything explicit, so the client does not depend on the environment; clients
    # are thread-safe and creating one costs ~0.1 s, hence the cache.
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        region_name=REGION,
    )


def bucket_of(uri_or_name: str) -> str:
    """``"b"`` for ``"s3://b/any/key"`` or ``"b"``."""
    return uri_or_name.removeprefix("s3://").split("/", 1)[0]


def unique_bucket_name(prefix: str = "test") -> str:
    """A valid bucket name that no other call returns."""
    return f"{prefix}-{uuid.uuid4().hex}"[:63]


def create_bucket(name: str | None = None, endpoint_url: str | None = None) -> str:
    """Create a bucket (a fresh name by default); returns ``s3://<name>``."""
    name = name or unique_bucket_name()
    s3_client(endpoint_url).create_bucket(Bucket=name)
    return f"s3://{name}"


def list_keys(bucket: str, prefix: str = "", endpoint_url: str | None = None) -> list[str]:
    """Every key in ``bucket`` (a name or ``s3://`` URI) under ``prefix``, raw from S3.

    Unlike :func:`sepcore.io.storage.list_files` nothing is filtered: this is the
    bucket's content as S3 reports it.
    """
    client = s3_client(endpoint_url)
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket_of(bucket), Prefix=prefix
    ):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return sorted(keys)


def list_multipart_uploads(bucket: str, endpoint_url: str | None = None) -> list[str]:
    """Keys of multipart uploads started in ``bucket`` and neither completed nor aborted."""
    out = s3_client(endpoint_url).list_multipart_uploads(Bucket=bucket_of(bucket))
    return sorted(u["Key"] for u in out.get("Uploads", []))


def remove_bucket(bucket: str, endpoint_url: str | None = None) -> None:
    """Delete a bucket with everything in it (objects and unfinished multipart uploads)."""
    client = s3_client(endpoint_url)
    name = bucket_of(bucket)
    uploads = client.list_multipart_uploads(Bucket=name).get("Uploads", [])
    for up in uploads:
        client.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
    keys = list_keys(name, endpoint_url=endpoint_url)
    for i in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[i : i + 1000]]
        client.delete_objects(Bucket=name, Delete={"Objects": batch, "Quiet": True})
    client.delete_bucket(Bucket=name)


@contextlib.contextmanager
def temporary_bucket(endpoint_url: str | None = None, prefix: str = "test") -> Iterator[str]:
    """A fresh bucket for the block; yields ``s3://<name>``, removed afterwards."""
    uri = create_bucket(unique_bucket_name(prefix), endpoint_url)
    try:
        yield uri
    finally:
        with contextlib.suppress(Exception):
            remove_bucket(uri, endpoint_url)


@contextlib.contextmanager
def local_s3(prefix: str = "test") -> Iterator[str]:
    """Server, environment and a fresh bucket in one: yields ``s3://<bucket>``."""
    with S3Server() as server, s3_environment(server.endpoint_url):
        with temporary_bucket(prefix=prefix) as uri:
            yield uri
