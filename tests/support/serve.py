"""One ``sep serve`` application for the serve tests, started on the shared local Ray.

:func:`served` starts it on first use and returns a :class:`Served`: an untrained smoke
hourglass (``model``) on a free loopback port with a token, a rendered demo song
(``song``), an allowed prefix holding a copy of it, a small ``sep separate``-style
output for the Library page and an evaluation document for the Models page. Its
separator replicas run with ``SEP_FAULTS=item_crash:crash* attempt 1``, so an upload
named ``crash...`` kills its replica on the first attempt (the retry test). tests/conftest.py stops it after the
last test that uses it (:func:`stop`): its replica holds a CPU the job tests need.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import requests
import soundfile as sf

from sepcore.io import storage
from sepcore.separate import state as S
from tests.support.reliability import tiny_checkpoint

MODEL = "tiny"
#: The configuration's limits, small enough to test cheaply.
MAX_UPLOAD_MB, MAX_SECONDS = 2.0, 20.0


@dataclass
class Served:
    url: str
    token: str
    model: str
    stems: list[str]
    song: str  # local path of a rendered demo song (mono FLAC, about 10-15 s)
    allowed: str  # local folder whose files a client may name by URI (holds song.flac)
    output: str  # the server's output URI
    library: str  # the separate output shown on the Library page
    root: str  # the temporary folder of all of it
    cfg: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def client(self) -> requests.Session:
        """A session sending the token."""
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.token}"
        return session


_APP: Served | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _library_output(folder: str, song: str) -> str:
    """A separate output as ``sep separate`` leaves it: one ok file with two stems, one error."""
    audio, rate = sf.read(song, dtype="float32", always_2d=True)
    stems_dir = os.path.join(folder, "stems", "song.flac-00000000")
    os.makedirs(stems_dir)
    uris = {}
    for stem, part in (("instrument", 0.5 * audio), ("rest", 0.5 * audio)):
        path = os.path.join(stems_dir, f"{stem}.flac")
        sf.write(path, part, rate, subtype="PCM_24")
        uris[f"{stem}_uri"] = storage.normalize_uri(path)
    rows = [{"source": "file:///library/song.flac", "relative": "song.flac", "status": "ok",
             "duration_s": len(audio) / rate, **uris},
            {"source": "file:///library/broken.mp3", "relative": "broken.mp3", "status": "error",
             "error_class": "DecodeError", "error": "broken.mp3: not a decodable audio file"}]  # fmt: skip
    S.write_manifest(storage.normalize_uri(folder), rows)
    return storage.normalize_uri(folder)


def _evaluation(folder: str) -> str:
    """An evaluate output's metrics.json (the part the model card reads)."""
    median = {m: {"instrument": {"sdr": sdr, "sir": sdr + 3.0, "sar": sdr + 6.0, "count": 2},
                  "rest": {"sdr": sdr + 1.0, "sir": sdr + 4.0, "sar": sdr + 7.0, "count": 2}}
              for m, sdr in (("model", 1.25), ("irm", 9.5), ("ibm", 8.75), ("mixture", -6.5))}  # fmt: skip
    doc = {"format": "sep-evaluate/1", "split": "test", "data": "file:///data/heldout", "tracks_evaluated": 2,
           "separation": {"guitar": {"methods": list(median), "median": median}}}  # fmt: skip
    os.makedirs(folder)
    with open(os.path.join(folder, "metrics.json"), "w") as fh:
        json.dump(doc, fh)
    return storage.normalize_uri(folder)


def served(demo_data: str) -> Served:
    """The running application (started on first use, on the Ray already running)."""
    global _APP
    if _APP is not None:
        return _APP
    from ray_jobs import serve as serve_job

    root = tempfile.mkdtemp(prefix="sep-serve-test-")
    song = os.path.join(storage.local_path(demo_data), "Track00001", "mix.flac")
    allowed = os.path.join(root, "allowed")
    os.makedirs(allowed)
    shutil.copy(song, os.path.join(allowed, "song.flac"))
    # SEP_SERVE_TEST_CHECKPOINT: a trained model instead (scripts/screenshots.sh, for the docs' pictures)
    trained = os.environ.get("SEP_SERVE_TEST_CHECKPOINT")
    ckpt = trained or tiny_checkpoint(os.path.join(root, "ckpt"))
    model = os.path.basename(trained.rstrip("/")).removeprefix("train_") if trained else MODEL
    library = _library_output(os.path.join(root, "library"), song)
    evaluation = _evaluation(os.path.join(root, "evaluation"))
    token = secrets.token_hex(16)
    cfg = serve_job.load(None, [
        f"models=[{{name: {model}, checkpoint: '{ckpt}', evaluation: '{evaluation}'}}]",
        f"port={free_port()}", f"output={os.path.join(root, 'out')}", f"allowed_prefixes=['{allowed}']",
        f"max_upload_mb={MAX_UPLOAD_MB}", f"max_seconds={MAX_SECONDS}", f"library_outputs=['{library}']",
        "separator={num_cpus: 1, batch_size: 32}",
    ])  # fmt: skip
    saved = {k: os.environ.get(k) for k in ("SEP_SERVE_TOKEN", "SEP_FAULTS")}
    os.environ.update({"SEP_SERVE_TOKEN": token, "SEP_FAULTS": "item_crash:crash* attempt 1"})
    try:
        url = serve_job.start(cfg)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    cards = requests.get(f"{url}/api/models", headers={"Authorization": f"Bearer {token}"}, timeout=30).json()
    _APP = Served(url, token, model, cards["models"][0]["stems"], song, allowed, storage.normalize_uri(cfg.output),
                  library, root, cfg)  # fmt: skip
    return _APP


def stop() -> None:
    """Stop the application if it runs (and forget it: the next :func:`served` starts another)."""
    global _APP
    if _APP is None:
        return
    from ray_jobs import serve as serve_job

    app, _APP = _APP, None
    try:
        serve_job.stop()
    finally:
        shutil.rmtree(app.root, ignore_errors=True)


def wait_done(app: Served, job_id: str, timeout_s: float = 90.0) -> dict[str, Any]:
    """Poll ``/api/jobs/<id>`` until the job is done or failed; its last answer."""
    import time

    client, deadline = app.client(), time.monotonic() + timeout_s
    while True:
        job = client.get(f"{app.url}/api/jobs/{job_id}", timeout=30).json()
        if job.get("state") in ("done", "error") or time.monotonic() > deadline:
            return job
        time.sleep(0.25)


def tone_wav(path: str, seconds: float, rate: int = 8000) -> str:
    """A quiet 8-bit tone of ``seconds`` (small on disk: long inputs cost little to upload)."""
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440.0 * t), rate, subtype="PCM_U8")
    return path
