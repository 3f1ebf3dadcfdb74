"""Fixtures shared by the test modules; the reusable logic lives in :mod:`tests.support`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sepcore.io import storage
from tests.support.rays import own_ray, start_shared
from tests.support.s3 import S3Server, s3_environment, temporary_bucket


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of an S3 server on loopback (moto), started once per session."""
    with S3Server() as server:
        yield server.endpoint_url


@pytest.fixture
def s3_bucket(s3_server: str) -> Iterator[str]:
    """``s3://<fresh bucket>``, with the environment pointing storage at the server."""
    with s3_environment(s3_server), temporary_bucket() as uri:
        yield uri


@pytest.fixture(params=["local", "s3"])
def storage_root(request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty location on each backend: ``file://<tmp_path>`` or ``s3://<fresh bucket>/root``."""
    if request.param == "local":
        return storage.normalize_uri(str(tmp_path))
    return storage.join(request.getfixturevalue("s3_bucket"), "root")


@pytest.fixture(scope="session")
def demo_data() -> str:
    """A small rendered demo set in the Slakh layout (6 songs of 10-14 s, 22.05 kHz mono).

    Rendered once per machine into the cache (``$SEP_CACHE_DIR``) and reused.
    """
    from tests.support.demo import demo_dataset

    return demo_dataset(tracks=6, min_seconds=10.0, max_seconds=14.0)


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """The local Ray shared by the whole run (2 CPUs, no dashboard; see tests/support/rays.py).

    Job test modules use it with ``pytestmark = pytest.mark.usefixtures("local_ray")``; a
    test that needs a Ray of its own uses :func:`tests.support.rays.own_ray`, which brings
    this one back afterwards.
    """
    import ray

    start_shared()
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_shards(local_ray: None, demo_data: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The demo data's guitar prepared small (129-bin STFT, 16-frame chunks), for fast training."""
    from ray_jobs import prepare

    out = tmp_path_factory.mktemp("shards")
    args = [f"sources=[{{kind: slakh, uri: '{demo_data}'}}]", f"output={out}", "target=guitar",
            "features={name: stft, n_fft: 256, hop: 128}", "chunks={frames: 16}",
            "split={train: 0.5, validation: 0.5, test: 0.0}"]  # fmt: skip
    assert prepare.main(args) == 0
    return storage.normalize_uri(str(out))


@pytest.fixture(scope="session")
def tiny_stem_shards(local_ray: None, demo_data: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two demo songs prepared for all five targets and ``other`` (129-bin STFT, 16-frame chunks),
    one song per split: Track00001 plays every class, Track00002 drums, piano and strings only."""
    import os
    import shutil

    from ray_jobs import prepare

    data, out = tmp_path_factory.mktemp("stem_data"), tmp_path_factory.mktemp("stem_shards")
    for name in ("Track00001", "Track00002"):
        shutil.copytree(os.path.join(storage.local_path(demo_data), name), data / name)
    args = [f"sources=[{{kind: slakh, uri: '{data}'}}]", f"output={out}", "target=null",
            "targets=[bass, drums, guitar, piano, strings]", "features={name: stft, n_fft: 256, hop: 128}",
            "chunks={frames: 16}", "split={train: 0.5, validation: 0.5, test: 0.0}"]  # fmt: skip
    assert prepare.main(args) == 0
    return storage.normalize_uri(str(out))


@pytest.fixture
def ray_in_s3_env(s3_bucket: str) -> Iterator[str]:
    """A fresh bucket, with Ray started inside the S3 environment so workers inherit it."""
    with own_ray():  # s3_bucket has set the environment
        yield s3_bucket


@pytest.fixture
def ray_with_faults(local_ray: None):
    """``with ray_with_faults("item_hang:*x*"):`` runs the block on a local Ray started with
    ``SEP_FAULTS`` set (Ray's workers read it when they start); the shared Ray comes back after."""
    return lambda spec: own_ray(SEP_FAULTS=spec)


@pytest.fixture
def served(local_ray: None, demo_data: str):
    """The ``sep serve`` application of tests/support/serve.py (started on first use; stopped
    after the last test that uses it, by :func:`pytest_runtest_teardown`)."""
    from tests.support import serve

    return serve.served(demo_data)


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the served application once the tests using it are over: its separator replica
    holds a CPU the job tests after it need."""
    uses = "served" in getattr(item, "fixturenames", ())
    if uses and (nextitem is None or "served" not in getattr(nextitem, "fixturenames", ())):
        from tests.support import serve

        serve.stop()
