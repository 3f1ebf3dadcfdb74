"""Library separation without Ray: isolated decoding, safe names, streamed stems."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from sepcore.io import storage
from sepcore.io.audio import Audio
from sepcore.io.decode import (
    AudioTooLong,
    DecodeError,
    DecoderCrash,
    DecodeTimeout,
    EmptyAudio,
    decode_isolated,
)
from sepcore.models import SMOKE_CONFIGS, build_model, checkpoint
from sepcore.separate.apply import FixedMaskModel, separate
from sepcore.separate.library import (
    LibraryFile,
    RawSamples,
    SeparationSettings,
    list_library,
    output_dir,
    safe_relative,
    separate_file,
    separate_stream,
)
from tests.support.library import write_any

RATE = 22050


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One thread: the models here are tiny, and two threads thrash on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _music(seconds: float, rate: int, channels: int, seed: int = 0) -> np.ndarray:
    """Tones and noise bursts within [-1, 1]. Shape: (samples, channels)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    cols = []
    for c in range(channels):
        f0 = 110.0 * (c + 1)
        x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.2 * np.sin(2 * np.pi * 3.01 * f0 * t)
        x += 0.05 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 0.7 * t) > 0)
        cols.append(x)
    return np.stack(cols, axis=1).astype(np.float32)


def _settings(**kw) -> SeparationSettings:
    base = dict(n_fft=256, hop=64, frames=16, model_rate=RATE, batch_size=16, block_seconds=2.0)
    return SeparationSettings(**{**base, **kw})


def _source(path: str) -> LibraryFile:
    uri = storage.normalize_uri(path)
    info = storage.info(uri)
    return LibraryFile(uri, os.path.basename(path), info["size"], info["version"])


# ---------------------------------------------------------------------- decoding


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aiff"])
def test_decode_isolated_reads_every_library_format(tmp_path, suffix):
    x = _music(1.5, 44100, 2)
    path = str(tmp_path / f"song{suffix}")
    write_any(path, Audio(x.T, 44100))
    decoded = decode_isolated(path, str(tmp_path / "out.f32"))
    assert (decoded.sample_rate, decoded.channels) == (44100, 2)
    assert abs(decoded.duration - 1.5) < 0.06  # lossy codecs pad by a frame or so
    y = decoded.samples()
    assert y.shape == (decoded.frames, 2) and np.isfinite(y).all()
    if suffix in (".wav", ".flac", ".aiff"):  # lossless: the same samples (16-bit)
        np.testing.assert_allclose(y, x, atol=1e-4)
    else:
        assert 0.3 < np.std(y) / np.std(x) < 1.5


def test_decode_errors_are_classified_and_name_the_file(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp3"
    text.write_text("not audio at all\n" * 50)
    x = _music(3.0, RATE, 1)
    good = tmp_path / "good.flac"
    sf.write(good, x, RATE)
    truncated = tmp_path / "cut.flac"
    truncated.write_bytes(good.read_bytes()[:1500])
    out = str(tmp_path / "out.f32")
    with pytest.raises(EmptyAudio, match="empty.wav"):
        decode_isolated(str(empty), out)
    for bad in (text, truncated):
        with pytest.raises(DecodeError, match=bad.name) as info:
            decode_isolated(str(bad), out)
        assert "not a decodable audio file" in str(info.value)
    nan = tmp_path / "nan.wav"
    y = x.copy()
    y[100] = np.nan
    sf.write(nan, y, RATE, subtype="FLOAT")
    with pytest.raises(DecodeError, match="nan.wav: the file holds NaN or Inf samples"):
        decode_isolated(str(nan), out)
    with pytest.raises(AudioTooLong, match="limit of 2 s"):
        decode_isolated(str(good), out, max_seconds=2.0)
    assert not os.path.exists(out)  # nothing half-written is left behind


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        ("decode_hang", DecodeTimeout, "longer than 2 s"),
        ("decode_crash", DecoderCrash, "SIGSEGV"),
        ("decode_raise", DecodeError, "InjectedFault"),
    ],
)
def test_a_hanging_or_crashing_decoder_cannot_take_the_caller_down(
    tmp_path, monkeypatch, fault, error, message
):
    path = tmp_path / "victim.wav"
    sf.write(path, _music(1.0, RATE, 1), RATE)
    monkeypatch.setenv("SEP_FAULTS", f"{fault}:*victim*")
    with pytest.raises(error, match=message):
        decode_isolated(str(path), str(tmp_path / "o.f32"), timeout_s=2.0)
    monkeypatch.delenv("SEP_FAULTS")
    assert decode_isolated(str(path), str(tmp_path / "o.f32")).frames == RATE


def test_memory_limit_applies_to_the_decoder_only(tmp_path, monkeypatch):
    path = tmp_path / "greedy.wav"
    sf.write(path, _music(1.0, RATE, 1), RATE)
    monkeypatch.setenv("SEP_FAULTS", "decode_oom:*greedy*")
    with pytest.raises(DecodeError, match="memory limit") as info:
        decode_isolated(str(path), str(tmp_path / "o.f32"), max_memory_mb=1024)
    assert info.value.kind == "memory"


# ------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "relative",
    ["../../etc/passwd.wav", "/abs/olute.wav", "a/./b/../c.flac", "..", "Ünïcödé 曲 name.mp3",
     "with space/and\\backslash.wav", "ctrl\x01char.wav", "deep/" * 5 + "x.ogg"],
)  # fmt: skip
def test_output_names_stay_inside_the_output_prefix(relative):
    root = "file:///srv/out"
    out = output_dir(root, relative)
    assert out.startswith(root + "/stems/")
    parts = out[len(root) + 1 :].split("/")
    assert ".." not in parts and "." not in parts and "" not in parts
    assert os.path.normpath(storage.local_path(out)).startswith("/srv/out/stems/")


def test_names_keep_unicode_and_spaces_and_never_collide():
    assert safe_relative("Artist/Ünïcödé 曲 name.mp3") == "Artist/Ünïcödé 曲 name.mp3"
    # NFD and NFC spellings of one name are one safe name, but two sources
    names = ["a b.wav", "a?b.wav", "a*b.wav", "song.mp3", "song.flac", "Cafe\u0301.wav", "Café.wav"]
    outs = {output_dir("file:///o", n) for n in names}
    assert len(outs) == len(names)
    assert safe_relative("Cafe\u0301.wav") == safe_relative("Café.wav")


def test_list_library_filters_suffixes_hidden_files_and_the_output(tmp_path):
    for rel in ["a/one.WAV", "b/two.flac", "notes.txt", ".hidden/x.wav", "a/.y.mp3", "out/z.wav"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    files = list_library(str(tmp_path), exclude=str(tmp_path / "out"))
    assert [f.relative for f in files] == ["a/one.WAV", "b/two.flac"]
    before = files[0].change_key
    (tmp_path / "a/one.WAV").write_bytes(b"xy")
    assert list_library(str(tmp_path))[0].change_key != before


# --------------------------------------------------------------------- streaming


@pytest.mark.parametrize(("rate", "channels"), [(RATE, 1), (44100, 2), (8000, 1), (48000, 6)])
def test_instrument_plus_rest_reproduces_the_input(tmp_path, rate, channels):
    """Mask and inverted mask at any rate and layout: the stems add up to the source."""
    x = _music(5.0, rate, channels)
    paths = {s: str(tmp_path / f"{s}.wav") for s in ("instrument", "rest")}
    out = separate_stream(FixedMaskModel(0.3), x, rate, _settings(output_format="wav"), paths,
                          str(tmp_path))  # fmt: skip
    assert out == {"sample_rate": rate, "channels": channels, "frames": x.shape[0]}
    inst, r1 = sf.read(paths["instrument"], dtype="float32", always_2d=True)
    rest, r2 = sf.read(paths["rest"], dtype="float32", always_2d=True)
    assert r1 == r2 == rate and inst.shape == rest.shape == x.shape
    np.testing.assert_allclose(inst + rest, x, atol=1e-6)
    # the instrument really is the masked mixture (0.3 of it below the model's Nyquist)
    assert 0.2 < np.std(inst) / np.std(x) < 0.31


def test_streamed_blocks_match_one_pass_separation(tmp_path):
    """Blocks of 2 s with resampling off give what separate() gives on the whole signal."""
    torch_model = build_model("hourglass", **SMOKE_CONFIGS["hourglass"]).eval()
    x = _music(7.3, RATE, 1)
    paths = {s: str(tmp_path / f"{s}.wav") for s in ("instrument", "rest")}
    settings = _settings(n_fft=64, hop=16, output_format="wav")
    separate_stream(torch_model, x, RATE, settings, paths, str(tmp_path))
    whole = separate(torch_model, x.T, RATE, 64, 16, 16, batch_size=16)
    inst, _ = sf.read(paths["instrument"], dtype="float32", always_2d=True)
    np.testing.assert_allclose(inst.T, whole["instrument"], atol=1e-5)


def test_separate_file_writes_both_stems_or_nothing(tmp_path, storage_root):
    model = build_model("hourglass", **SMOKE_CONFIGS["hourglass"]).eval()
    good = tmp_path / "good song.flac"
    sf.write(good, _music(3.0, 44100, 2), 44100, subtype="PCM_24")
    out = storage.join(storage_root, "stems", "good")
    settings = _settings(n_fft=64, hop=16)
    row = separate_file(model, _source(str(good)), out, settings)
    assert row["duration_s"] == pytest.approx(3.0)
    assert (row["sample_rate"], row["channels"], row["source_channels"]) == (44100, 2, 2)
    assert sorted(storage.list_files(out)) == sorted([row["instrument_uri"], row["rest_uri"]])
    bad = tmp_path / "bad.flac"
    bad.write_bytes(good.read_bytes()[:1000])
    bad_out = storage.join(storage_root, "stems", "bad")
    with pytest.raises(DecodeError, match="bad.flac"):
        separate_file(model, _source(str(bad)), bad_out, settings)
    assert storage.list_files(bad_out) == []


def test_checkpoint_models_separate_through_the_stream(tmp_path):
    """A saved hourglass checkpoint loads and separates a stereo 44.1 kHz file."""
    model = build_model("hourglass", **SMOKE_CONFIGS["hourglass"])
    meta = {"model": {"name": "hourglass", "config": SMOKE_CONFIGS["hourglass"],
                      "log_input": True},
            "task": "separator", "target": "guitar", "sample_rate": RATE, "channels": 1,
            "feature": {"name": "stft", "n_fft": 64, "hop": 16}, "frames": 16}  # fmt: skip
    checkpoint.save(str(tmp_path / "ckpt"), checkpoint.LogMagnitude(model), meta)
    loaded, meta2 = checkpoint.load_model(str(tmp_path / "ckpt"))
    x = _music(2.0, 44100, 2)
    paths = {s: str(tmp_path / f"{s}.flac") for s in ("instrument", "rest")}
    separate_stream(loaded, x, 44100, _settings(n_fft=64, hop=16), paths, str(tmp_path))
    inst, _ = sf.read(paths["instrument"], dtype="float32", always_2d=True)
    rest, _ = sf.read(paths["rest"], dtype="float32", always_2d=True)
    np.testing.assert_allclose(inst + rest, x, atol=2e-5)  # 24-bit FLAC quantisation
    assert 0.0 < np.std(inst) < np.std(x)


def test_raw_file_reader_gives_the_same_stems_as_an_array(tmp_path):
    """Separating from the decoded file by explicit reads equals separating the array."""
    x = _music(4.0, 44100, 2)
    raw = tmp_path / "x.f32"
    x.tofile(raw)
    reader = RawSamples(str(raw), x.shape[0], 2)
    np.testing.assert_array_equal(reader[1000:2000], x[1000:2000])
    np.testing.assert_array_equal(reader.T[:, 5:9], x[5:9].T)
    outs = []
    for i, samples in enumerate((x, reader)):
        paths = {s: str(tmp_path / f"{s}{i}.wav") for s in ("instrument", "rest")}
        separate_stream(FixedMaskModel(0.6), samples, 44100, _settings(output_format="wav"),
                        paths, str(tmp_path))  # fmt: skip
        outs.append(sf.read(paths["instrument"], dtype="float32")[0])
    np.testing.assert_array_equal(outs[0], outs[1])


def _stereo_checkpoint(tmp_path) -> str:
    """A saved stereo hourglass checkpoint (log1p input), as the train job writes one."""
    config = {**SMOKE_CONFIGS["hourglass"], "in_channels": 2}
    meta = {"model": {"name": "hourglass", "config": config, "log_input": True},
            "task": "separator", "target": "guitar", "sample_rate": RATE, "channels": 2,
            "feature": {"name": "stft", "n_fft": 64, "hop": 16}, "frames": 16}  # fmt: skip
    path = str(tmp_path / "stereo_ckpt")
    checkpoint.save(path, checkpoint.build(meta["model"]), meta)
    return path


@pytest.mark.parametrize(("source", "configured", "stems"), [(2, None, 2), (1, None, 1), (2, 1, 1)])
def test_a_stereo_checkpoint_separates_through_the_stream(tmp_path, source, configured, stems):
    """Stereo in, stereo stems out; a mono source (or ``channels: 1``) gives mono stems."""
    loaded, _ = checkpoint.load_model(_stereo_checkpoint(tmp_path))
    x = _music(2.0, RATE, source)
    x[:, -1] *= 0.5
    paths = {s: str(tmp_path / f"{s}.wav") for s in ("instrument", "rest")}
    settings = _settings(n_fft=64, hop=16, output_format="wav", channels=configured)
    out = separate_stream(loaded, x, RATE, settings, paths, str(tmp_path))
    assert out["channels"] == stems
    inst, _ = sf.read(paths["instrument"], dtype="float32", always_2d=True)
    rest, _ = sf.read(paths["rest"], dtype="float32", always_2d=True)
    laid_out = x if stems == source else x.mean(axis=1, keepdims=True)
    assert inst.shape == rest.shape == laid_out.shape
    np.testing.assert_allclose(inst + rest, laid_out, atol=1e-6)
    whole = separate(loaded, laid_out.T, RATE, 64, 16, 16)  # the one apply, in one pass
    np.testing.assert_allclose(inst.T, whole["instrument"], atol=1e-5)
    assert 0.0 < np.std(inst) < np.std(laid_out)


# ---------------------------------------------------------------- settings and the run's state


def test_settings_come_from_the_config_and_the_checkpoint():
    from types import SimpleNamespace

    from sepcore.errors import ConfigError
    from sepcore.separate.config import Inference

    cfg = SimpleNamespace(checkpoint="ckpt", inference=Inference(batch_size=4), format="wav",
                          sample_rate=None, channels=1)  # fmt: skip
    meta = {"task": "separator", "feature": {"n_fft": 512, "hop": 128}, "frames": 32, "sample_rate": RATE}
    settings = SeparationSettings.of(cfg, meta)
    assert (settings.n_fft, settings.hop, settings.frames, settings.batch_size) == (512, 128, 32, 4)
    assert settings.key() == settings.model_copy(update={"device": "cuda", "batch_size": 1}).key()
    assert settings.key() != settings.model_copy(update={"overlap": 0.25}).key()
    with pytest.raises(ConfigError, match="is not a separator checkpoint"):
        SeparationSettings.of(cfg, {"task": "classifier"})


def test_actor_pool_follows_the_cluster():
    from sepcore.separate.config import Inference

    assert Inference().pool({"CPU": 8}) == (8, 0.0)
    assert Inference(cpus_per_actor=2).pool({"CPU": 8}) == (4, 0.0)
    assert Inference().pool({"CPU": 8, "GPU": 2}) == (2, 1.0)
    assert Inference(device="cpu").pool({"CPU": 8, "GPU": 2}) == (8, 0.0)
    assert Inference(pool_size=3).pool({"CPU": 8}) == (3, 0.0)


def test_a_done_file_is_skipped_only_as_it_was(tmp_path):
    from sepcore.separate import state

    out = storage.normalize_uri(str(tmp_path / "out"))
    f = LibraryFile("file:///lib/a.wav", "a.wav", 10, "v1")
    stems = {"instrument_uri": "file:///x/instrument.flac", "rest_uri": "file:///x/rest.flac"}
    row = {"source": f.uri, "relative": "a.wav", "status": "ok", "change_key": f.change_key,
           "model_id": "m", "settings": "s", **stems}  # fmt: skip
    assert state.is_done(row, f, "m", "s", set(stems.values()))
    assert not state.is_done(row, f, "other", "s", set(stems.values()))
    assert not state.is_done(row, f, "m", "s", {stems["rest_uri"]})  # a stem is gone
    assert not state.is_done({**row, "status": "error"}, f, "m", "s", set(stems.values()))
    state.record(out, {**row, "status": "error", "error_class": "X", "error": "bad"}, 0.0)
    assert state.previous_state(out)[f.uri]["status"] == "error"
    assert state.every_file_failed([{**row, "status": "error", "error_class": "X", "error": "bad"}])["status"] == "failed"
    assert state.every_file_failed([row, {**row, "status": "error", "error_class": "X", "error": "bad"}]) == {}
    state.clear_run(out)
    assert state.previous_state(out) == {}


def test_run_info_and_run_progress() -> None:
    from sepcore.separate import state

    info = state.run_info({"model_sha256": "0123456789abcdef0123", "target": "guitar"})
    assert info["model_id"] == "0123456789abcdef" and info["target"] == "guitar"
    assert len(info["run_id"]) == 16 and info["run_id"].endswith("Z")
    progress = state.RunProgress(todo=2, done_before=1)
    progress.update({"relative": "a.wav", "status": "ok", "duration_s": 10.0, "total_s": 0.0})
    progress.update({"relative": "b.wav", "status": "error", "error": "broken", "total_s": 0.0})
    progress.close()
    assert [r["relative"] for r in progress.rows] == ["a.wav", "b.wav"]
    assert progress.audio_s == 10.0 and progress.startup >= 0.0
