"""Config validation and the CLI contract: errors name the key and exit with status 2."""

from __future__ import annotations

import subprocess
import sys
from typing import Literal

import pytest
from pydantic import Field

from ray_jobs import cli, render
from sepcore.config import Config, describe, load_config, parse_override
from sepcore.errors import ConfigError


class Inner(Config):
    rate: int = 22050
    names: list[str] = Field(default_factory=list)


class Outer(Config):
    output: str
    mode: Literal["a", "b"] = "a"
    level: float = 0.5
    inner: Inner = Field(default_factory=Inner)


@pytest.mark.parametrize(
    "text, key, value",
    [("tracks=40", "tracks", 40), ("lr=1.5e-4", "lr", 1.5e-4), ("a.b.c=true", "a.b.c", True),
     ("names=[x, y]", "names", ["x", "y"]), ("output=s3://b/k=v", "output", "s3://b/k=v"), ("x=", "x", "")],
)  # fmt: skip
def test_parse_override(text, key, value):
    assert parse_override(text) == (key, value)


def test_overrides_apply_on_top_of_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output: here\ninner:\n  rate: 44100\n  names: [p]\n")
    cfg = load_config(Outer, str(path), ["inner.names=[g, b]", "level=1e-3", "mode=b"])
    assert cfg.output == "here" and cfg.inner.rate == 44100 and cfg.inner.names == ["g", "b"]
    assert cfg.level == pytest.approx(1e-3) and cfg.mode == "b"


@pytest.mark.parametrize(
    "yaml_text, overrides, key, problem",
    [
        ("output: o\n", ["bogus=1"], "bogus", "unknown key"),
        ("output: o\n", ["inner.bogus=1"], "inner.bogus", "unknown key"),
        ("output: o\nextra: 1\n", [], "extra", "unknown key"),
        ("output: o\n", ["inner.rate=fast"], "inner.rate", "valid integer"),
        ("output: o\n", ["mode=c"], "mode", "'a' or 'b'"),
        ("", ["level=[1, 2]"], "output", "missing required value"),
        ("- a\n", [], "--config", "must hold a mapping"),
        ("output: [unclosed\n", [], "--config", "not valid YAML"),
        ("output: o\n", ["novalue"], "novalue", "key=value"),
    ],
)
def test_config_errors_name_the_key(tmp_path, yaml_text, overrides, key, problem):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(Outer, str(path), overrides)
    assert info.value.key == key
    assert problem in str(info.value)


def test_describe_lists_every_key_with_default():
    text = "\n".join(describe(Outer))
    for fragment in ("output (str; required)", "mode ('a' | 'b'; default 'a')", "inner.rate (int; default 22050)"):
        assert fragment in text


@pytest.mark.parametrize(
    "argv, key",
    [
        (["midi=demo", "output=/tmp/x", "trakcs=4"], "trakcs"),
        (["midi=demo", "output=/tmp/x", "tracks=many"], "tracks"),
        (["midi=demo", "output=/tmp/x", "channels=3"], "channels"),
        (["midi=demo"], "output"),
        (["output=/tmp/x"], "midi"),
        (["midi=demo", "output=/tmp/x", "demo.min_seconds=-1"], "demo.min_seconds"),
    ],
)
def test_job_exits_2_naming_the_key_before_ray_starts(argv, key, capsys, monkeypatch):
    from ray_jobs import common

    started = []
    monkeypatch.setattr(common, "init_ray", lambda *args: started.append(args))  # the test run's Ray may be up
    assert render.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"'{key}'" in err[0] and err[0].startswith("sep render: error:")
    assert started == []


def test_missing_config_file_is_a_config_error(capsys):
    assert render.main(["-c", "/nonexistent/render.yaml"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_sep_lists_only_jobs_that_exist_and_rejects_unknown(capsys):
    assert cli.main([]) == 2
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (module, _) in cli.JOBS.items():
        assert name in out
        __import__(module)  # every listed job imports
    assert cli.main(["nosuchjob"]) == 2
    assert "unknown job 'nosuchjob'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "cmd",
    [[sys.executable, "-m", "ray_jobs.render", "--help"], [sys.executable, "-m", "ray_jobs.cli", "render", "--help"]],
)
def test_help_explains_keys_and_defaults(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for fragment in ("midi (str; required)", "sample_rate (int; default 44100)", "RAY_ADDRESS"):
        assert fragment in proc.stdout


def test_module_and_sep_give_identical_errors():
    args = ["midi=demo", "output=/tmp/x", "tracks=zero"]
    a = subprocess.run([sys.executable, "-m", "ray_jobs.render", *args], capture_output=True, text=True, timeout=120)
    b = subprocess.run([sys.executable, "-m", "ray_jobs.cli", "render", *args], capture_output=True, text=True, timeout=120)
    assert a.returncode == b.returncode == 2
    assert a.stderr == b.stderr and "'tracks'" in a.stderr


def test_every_shipped_config_validates():
    import glob
    import importlib
    import os

    files = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.yaml")))
    assert files
    for path in files:
        job_name = os.path.basename(path).split("_", 1)[0].removesuffix(".yaml")
        module = importlib.import_module(cli.JOBS[job_name][0])
        load_config(module.JOB.config_cls if hasattr(module, "JOB") else module.ServeConfig, path)
