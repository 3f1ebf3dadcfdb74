"""``sep serve``: the configuration rules and job store without Ray, then HTTP against a real
Serve application on the local Ray (tests/support/serve.py): upload, poll, download, named
URIs, every bad input, the token rule, a replica that dies, the Library and Models pages."""

from __future__ import annotations

import io
import os
import re
import time
import zipfile

import numpy as np
import pytest
import soundfile as sf

from sepcore.errors import ConfigError
from sepcore.io import storage
from sepcore.serve import jobs as J
from sepcore.serve.config import ServeConfig, token_for
from sepcore.serve.work import SPEC_FFT, SPEC_ROWS, spectrogram_png
from tests.support.serve import MAX_SECONDS, MAX_UPLOAD_MB, tone_wav, wait_done

MODELS = [{"name": "m", "checkpoint": "/nowhere"}]


# ------------------------------------------------------------------ without Ray


def test_binding_beyond_loopback_needs_a_long_token():
    local = ServeConfig(models=MODELS, output="/tmp/x")
    assert token_for(local, {}) is None
    assert token_for(local.model_copy(update={"host": "::1"}), {}) is None
    public = ServeConfig(models=MODELS, output="/tmp/x", host="0.0.0.0")
    with pytest.raises(ConfigError, match="SEP_SERVE_TOKEN"):
        token_for(public, {})
    with pytest.raises(ConfigError, match="at least 16"):
        token_for(public, {"SEP_SERVE_TOKEN": "short"})
    assert token_for(public, {"SEP_SERVE_TOKEN": "x" * 16}) == "x" * 16
    with pytest.raises(Exception, match="given twice"):
        ServeConfig(models=MODELS * 2, output="/tmp/x")
    with pytest.raises(Exception, match="letters, digits"):
        ServeConfig(models=[{"name": "../m", "checkpoint": "/c"}], output="/tmp/x")


def test_named_inputs_stay_below_the_allowed_prefixes(tmp_path):
    prefixes = ServeConfig(models=MODELS, output="/tmp/x", allowed_prefixes=[str(tmp_path / "ok")]).prefixes()
    assert J.check_uri(str(tmp_path / "ok" / "a.flac"), prefixes) == storage.normalize_uri(str(tmp_path / "ok" / "a.flac"))
    for uri in (str(tmp_path / "okay" / "a.flac"), "/etc/passwd", f"{tmp_path}/ok/../secret.flac", "s3://b/ok/a.flac"):
        with pytest.raises(J.BadInput) as err:
            J.check_uri(uri, prefixes)
        assert err.value.status == 403 and uri in str(err.value)
    with pytest.raises(J.BadInput, match="outside"):
        J.check_uri("/etc/passwd", [])


def test_jobs_expire_after_their_time_to_live(tmp_path):
    store = J.JobStore(str(tmp_path), ttl_hours=1.0)
    fresh, old = J.new_id(), J.new_id()
    store.create(fresh, model="m")
    store.create(old, model="m")
    store.update(old, created=time.time() - 3601.0)
    storage.write_text(store.uri(old, "stems", "a.flac"), "x")
    assert store.read(fresh)["state"] == "queued"
    assert store.expire() == 1
    assert store.read(old) is None and not os.path.exists(tmp_path / "jobs" / old)
    assert store.read(fresh) is not None
    assert store.read("../" + fresh) is None and store.file(fresh, "../job.json") is None


def test_spectrogram_puts_a_tone_at_its_frequency():
    import matplotlib.image

    rate, freq = 22050, 2000.0
    t = np.arange(3 * rate) / rate
    png = spectrogram_png((0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)[:, None], rate)
    image = matplotlib.image.imread(io.BytesIO(png))
    assert image.shape[0] == SPEC_ROWS and image.shape[1] > 10
    brightest = int(np.argmax(image[:, :, :3].sum(axis=2).mean(axis=1)))  # row 0 is the top
    bins_per_row = (SPEC_FFT // 2) // SPEC_ROWS
    expected = SPEC_ROWS - 1 - int(freq / (rate / SPEC_FFT)) // bins_per_row
    assert abs(brightest - expected) <= 1


def test_a_job_from_upload_to_zip_on_each_storage(storage_root, demo_data, tmp_path):
    """The ingress's checks and a replica's work without Serve, on file:// and s3:// outputs."""
    from starlette.datastructures import UploadFile

    from sepcore.separate import separator as SP
    from sepcore.serve import app as A
    from sepcore.serve import work as W
    from tests.support.reliability import tiny_checkpoint

    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"))
    cfg = ServeConfig(models=[{"name": "tiny", "checkpoint": ckpt}], output=storage_root)
    store, job_id = J.JobStore(cfg.output, cfg.results_ttl_hours), J.new_id()
    song = os.path.join(storage.local_path(demo_data), "Track00002", "mix.flac")
    with open(song, "rb") as fh:
        fields = A._take_upload(store, cfg, job_id, UploadFile(io.BytesIO(fh.read()), filename="../../etc/x.flac"))
    assert fields["input_name"] == "x.flac" and fields["input_uri"] == store.uri(job_id, "input.flac")
    store.create(job_id, model="tiny", stems=["instrument", "rest"], **fields)
    meta = SP.describe(ckpt)
    settings = W.separation_settings(cfg, ckpt, meta)
    separator, _ = SP.build(ckpt, settings)
    job = W.run_job(separator, settings, store, job_id, ["instrument", "rest"], cfg)
    assert job["state"] == "done" and job["attempts"] == 1, job
    names = sorted(storage.basename(u) for u in storage.list_files(store.uri(job_id)))
    assert names == sorted(["job.json", "input.flac", "mixture.flac", "instrument.flac", "rest.flac",
                            "mixture.png", "instrument.png", "rest.png", "stems.zip"])  # fmt: skip
    answer = A._file(store.file(job_id, "stems.zip"), "stems.zip")
    body = answer.body if hasattr(answer, "body") else open(answer.path, "rb").read()  # s3: bytes; file: a path
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert sorted(zf.namelist()) == ["instrument.flac", "rest.flac"]
    assert "attachment" in answer.headers["content-disposition"]


# ------------------------------------------------------------------ the command


def test_the_command_serves_until_sigterm_and_refuses_a_public_host_without_token(local_ray, tmp_path):
    import signal
    import subprocess
    import sys

    import ray
    import requests
    from ray import serve

    from tests.support.reliability import tiny_checkpoint
    from tests.support.serve import free_port

    base = [sys.executable, "-m", "ray_jobs.serve", f"models=[{{name: t, checkpoint: '{tiny_checkpoint(str(tmp_path / 'c'))}'}}]",
            f"output={tmp_path / 'out'}", "separator.num_cpus=0.5"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "SEP_SERVE_TOKEN"}
    public = subprocess.run([*base, "host=0.0.0.0"], capture_output=True, text=True, timeout=120, env=env)
    assert public.returncode == 2 and "SEP_SERVE_TOKEN" in public.stderr
    port = free_port()
    env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address  # the test's Ray: no second start-up
    proc = subprocess.Popen([*base, f"port={port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "serving on" in line:
                break
        assert f"serving on http://127.0.0.1:{port}" in "".join(lines), "".join(lines)
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=30).status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "sep serve: stopped" in out, out
        assert "sep" not in serve.status().applications  # Serve itself stays: the cluster is not ours
    finally:
        if proc.poll() is None:
            proc.kill()
        serve.shutdown()  # on a cluster the command removes its application only


# ------------------------------------------------------------------ HTTP on Ray Serve

def _post(app, files=None, **data):
    return app.client().post(f"{app.url}/api/separate", files=files, data={"model": app.model, **data}, timeout=60)


def _audio(data: bytes) -> tuple[np.ndarray, int]:
    return sf.read(io.BytesIO(data), dtype="float32", always_2d=True)


def test_upload_poll_download(served):
    app, client = served, served.client()
    with open(app.song, "rb") as fh:
        answer = _post(app, files={"file": ("my song.flac", fh)})
    assert answer.status_code == 200, answer.text
    job = wait_done(app, answer.json()["id"])
    assert job["state"] == "done", job
    assert set(job["stems"]) == set(app.stems) and job["seconds"] > 0
    song, rate = sf.read(app.song, dtype="float32", always_2d=True)
    mixture, mixture_rate = _audio(client.get(app.url + job["mixture"]).content)
    assert mixture_rate == rate and np.abs(mixture - song).max() < 1e-6
    stems = {}
    for stem, url in job["stems"].items():
        got = client.get(app.url + url)
        assert got.status_code == 200 and got.headers["content-type"] == "audio/flac"
        stems[stem], stem_rate = _audio(got.content)
        assert stem_rate == rate and stems[stem].shape == song.shape
    assert np.abs(stems["instrument"] + stems["rest"] - song).max() < 1e-5  # rest = input - instrument
    with zipfile.ZipFile(io.BytesIO(client.get(app.url + job["zip"]).content)) as zf:
        assert sorted(zf.namelist()) == ["instrument.flac", "rest.flac"]
        assert zf.read("rest.flac") == client.get(app.url + job["stems"]["rest"]).content
    assert client.get(app.url + job["spectrograms"]["instrument"]).content[:8] == b"\x89PNG\r\n\x1a\n"
    page = client.get(f"{app.url}/jobs/{job['id']}").text
    assert page.count('class=stem-player') == 2 and "id=player-mixture" in page and "id=download-all" in page
    assert "my song.flac" in page and re.search(r"<span id=elapsed>[0-9.]+</span>", page)

    with open(app.song, "rb") as fh:  # one stem of the two
        only = wait_done(app, _post(app, files={"file": ("again.flac", fh)}, stems="instrument").json()["id"])
    assert only["state"] == "done" and list(only["stems"]) == ["instrument"]


def test_a_named_uri_below_an_allowed_prefix(served):
    app = served
    job = wait_done(app, _post(app, uri=os.path.join(app.allowed, "song.flac")).json()["id"])
    assert job["state"] == "done" and job["input"] == "song.flac" and set(job["stems"]) == set(app.stems)
    outside = _post(app, uri=app.song)
    assert outside.status_code == 403 and "outside the allowed prefixes" in outside.json()["error"]
    escape = _post(app, uri=os.path.join(app.allowed, "..", "out", "x.flac"))
    assert escape.status_code == 403 and "'..'" in escape.json()["error"]
    missing = _post(app, uri=os.path.join(app.allowed, "missing.flac"))
    assert missing.status_code == 400 and "no such file" in missing.json()["error"]


def test_every_bad_input_gets_a_4xx_that_says_what_is_wrong(served, tmp_path):
    app, client = served, served.client()
    too_big = os.urandom(int((MAX_UPLOAD_MB + 0.5) * (1 << 20)))
    too_long = tone_wav(str(tmp_path / "long.wav"), MAX_SECONDS + 5)
    with open(too_long, "rb") as fh:
        long_bytes = fh.read()
    cases = [
        (_post(app, files={"file": ("notes.txt.wav", b"this is not audio " * 50)}), 400, "not an audio file"),
        (_post(app, files={"file": ("empty.flac", b"")}), 400, "empty"),
        (_post(app, files={"file": ("big.wav", too_big)}), 413, "limit is 2 MiB"),
        (_post(app, files={"file": ("long.wav", long_bytes)}), 413, f"longer than the server takes ({MAX_SECONDS:g} s)"),
        (_post(app, files={"file": ("a.wav", long_bytes)}, model="nope"), 400, "unknown model 'nope'"),
        (_post(app, files={"file": ("a.wav", long_bytes)}, stems="vocals"), 400, "unknown stem(s) vocals"),
        (_post(app), 400, "give a file"),
        (client.get(f"{app.url}/api/jobs/{'0' * 32}"), 404, "no job"),
        (client.get(f"{app.url}/api/jobs/..%2Fjob.json"), 404, "no "),
    ]  # fmt: skip
    for answer, status, message in cases:
        assert answer.status_code == status, (answer.status_code, answer.text)
        assert message in answer.json()["error"], answer.text
    assert client.get(f"{app.url}/jobs/{'0' * 32}/files/rest.flac").status_code == 404
    assert client.get(f"{app.url}/jobs/").status_code == 404  # no listing of the jobs
    assert client.get(app.url + "/").status_code == 200  # still serving
    assert not os.listdir(storage.local_path(app.output) + "/jobs") or all(
        len(name) == 32 for name in os.listdir(storage.local_path(app.output) + "/jobs"))


def test_the_token_is_checked_on_every_page_and_call(served):
    import requests

    app = served
    anonymous = requests.get(f"{app.url}/api/models", timeout=30)
    assert anonymous.status_code == 401 and "token" in anonymous.json()["error"]
    assert requests.get(f"{app.url}/", timeout=30).status_code == 401
    wrong = requests.get(f"{app.url}/api/models", headers={"Authorization": "Bearer " + "x" * 32}, timeout=30)
    assert wrong.status_code == 401
    assert requests.get(f"{app.url}/?token=wrong", timeout=30).status_code == 401
    browser = requests.Session()
    first = browser.get(f"{app.url}/models?token={app.token}", allow_redirects=False, timeout=30)
    assert first.status_code == 303 and first.headers["location"] == "/models"
    assert "sep_token" in first.cookies and "httponly" in first.headers["set-cookie"].lower()
    assert browser.get(f"{app.url}/models", timeout=30).status_code == 200  # the cookie from now on
    assert app.client().get(f"{app.url}/api/models", timeout=30).json()["models"][0]["stems"] == ["instrument", "rest"]


def test_a_dying_replica_is_replaced_and_the_song_retried_once(served):
    app = served
    with open(app.song, "rb") as fh:  # SEP_FAULTS=item_crash:crash* attempt 1: the first try kills the replica
        job = wait_done(app, _post(app, files={"file": ("crash.flac", fh)}).json()["id"], timeout_s=120)
    assert job["state"] == "done" and job["attempts"] == 2, job
    assert set(job["stems"]) == set(app.stems)


def test_library_and_model_pages(served):
    app, client = served, served.client()
    page = client.get(f"{app.url}/library").text
    assert "ok <b class=ok>1</b>" in page and "error <b class=errors>1</b>" in page
    assert "broken.mp3: not a decodable audio file" in page
    players = re.findall(r'src="(/library/0/0/[a-z]+)"', page)
    assert sorted(players) == ["/library/0/0/instrument", "/library/0/0/rest"]
    stem, rate = _audio(client.get(app.url + players[0]).content)
    song, song_rate = sf.read(app.song, dtype="float32", always_2d=True)
    assert rate == song_rate and np.abs(stem - 0.5 * song).max() < 1e-5
    assert client.get(f"{app.url}/library/0/1/instrument").status_code == 404  # the error row has none
    assert client.get(f"{app.url}/library/5/0/instrument").status_code == 404
    cards = client.get(f"{app.url}/models").text
    assert 'data-model="tiny"' in cards and "instrument, rest" in cards and "hourglass" in cards
    assert re.search(r"model</td><td>instrument</td><td class=num>1.25</td><td class=num>4.25</td>", cards)
    assert "irm</td><td>rest</td><td class=num>10.50</td>" in cards

