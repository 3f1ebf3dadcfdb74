"""Decoder crash isolation (issue 10, item 7), at the level of the separate job.

The decode child is made to segfault on one file and to hang on another
(``SEP_FAULTS``, :mod:`sepcore.faults`). Pass: exactly those two files fail, with
``DecoderCrash`` and ``DecodeTimeout`` naming them; every other file is separated; the
job exits 0 within a bound set by the decode time limit, not by the hang.
(Unit-level isolation of :func:`sepcore.io.decode.decode_isolated` is in tests/test_library.py.)
"""

from __future__ import annotations

import os
import time

import pytest

from ray_jobs import separate as job
from tests.support.rays import own_ray
from tests.support.reliability import (
    check_stems,
    manifest_rows,
    read_summary,
    tiny_checkpoint,
    tone_library,
)

TIMEOUT_S = 8.0  # generous: a loaded CI machine starts Python slowly


@pytest.fixture(scope="module", autouse=True)
def faulty_ray():
    # Ray workers read SEP_FAULTS from the environment they start with.
    with own_ray(SEP_FAULTS="decode_crash:*crash me*;decode_hang:*hang me*"):
        yield


def test_a_crashing_and_a_hanging_decoder_fail_only_their_files(tmp_path):
    lib = tmp_path / "library"
    paths = tone_library(str(lib), 8, seconds=2.0)
    os.rename(paths[2], os.path.join(os.path.dirname(paths[2]), "crash me.wav"))
    os.rename(paths[5], os.path.join(os.path.dirname(paths[5]), "hang me.wav"))
    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"))
    out = str(tmp_path / "out")
    start = time.monotonic()
    assert job.main([f"library={lib}", f"output={out}", f"checkpoint={ckpt}",
                     f"decode.timeout_s={TIMEOUT_S}",
                     "inference={batch_size: 32, pool_size: 2}"]) == 0  # fmt: skip
    wall = time.monotonic() - start

    rows = manifest_rows(out)
    assert len(rows) == 8
    failed = {rel: r for rel, r in rows.items() if r["status"] != "ok"}
    assert sorted(failed) == ["00/crash me.wav", "00/hang me.wav"]
    crash, hang = failed["00/crash me.wav"], failed["00/hang me.wav"]
    assert crash["error_class"] == "DecoderCrash" and "SIGSEGV" in crash["error"]
    assert hang["error_class"] == "DecodeTimeout" and f"{TIMEOUT_S:g} s" in hang["error"]
    for r in (crash, hang):
        assert r["error"].startswith(r["source"] + ": ")
    assert hang["total_s"] < TIMEOUT_S + 5  # the hang cost its time limit, no more
    for row in rows.values():
        if row["status"] == "ok":
            check_stems(row)
    summary = read_summary(out)
    assert summary["counts"]["ok"] == 6 and summary["counts"]["error"] == 2
    # 8 two-second files on 2 actors: start-up plus a few seconds, far below the hang
    assert wall < 120, wall
