"""A two-node Ray cluster on this machine, and a job submitted to it like to a real one.

A head and a worker node are started as separate ``ray start`` processes (one CPU
each, their own ports, temp dir and token), the render job is submitted through the
Job Submission API with the repository as ``working_dir`` and the rest of
``cluster/runtime_env.yaml``, and its ``summary.json`` must name both nodes. The cluster runs with token
authentication, so the submission also shows that the token reaches the job API.

Nothing here is skipped: when a cluster cannot be started on this machine the test
fails and says why.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from sepcore.data.slakh import METADATA
from tests.support.midi import multitrack_midi

REPO = Path(__file__).resolve().parents[1]
RAY_CLI = Path(sys.executable).with_name("ray")
SONGS = 4
START_TIMEOUT_S = 90.0
START_ATTEMPTS = 3
JOB_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0

pytestmark = pytest.mark.slow


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free a moment ago (held open together while picked)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class StartError(Exception):
    """A node did not start (on a busy machine Ray's own 30 s start-up limit can pass)."""


class TwoNodeCluster:
    """A Ray head and one worker node, each a ``ray start --block`` process of its own.

    Every port is chosen here (none of Ray's defaults, so other Ray instances on the
    machine are not touched), the temp dir is private, and :meth:`stop` ends only the
    processes started here: each ``ray start`` (which stops its node), then, by PID,
    whatever is left in their sessions or names this cluster's temp dir.
    """

    def __init__(self) -> None:
        if not RAY_CLI.exists():
            pytest.fail(f"the ray CLI is missing next to this Python ({RAY_CLI}); install ray")
        from ray._private.utils import get_dashboard_dependency_error

        if missing := get_dashboard_dependency_error():
            pytest.fail(f"the Job Submission API runs in Ray's dashboard, which needs ray[default] "
                        f"(pip install 'ray[default]'): {missing}")  # fmt: skip
        # Short: Ray's unix socket paths live under it and must stay under 108 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="sepray-", dir="/tmp")
        self.token = secrets.token_hex(24)
        (self.gcs_port, self.dashboard_port, self.client_port, self.agent_head,
         self.agent_worker) = _free_ports(5)  # fmt: skip
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.env = self._environment()
        self.procs: list[subprocess.Popen] = []

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        # `python` in a job's entrypoint is this interpreter, as on a cluster image.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0")
        return env

    def _start(self, name: str, args: list[str]) -> None:
        common = ["--block", "--num-cpus=1", "--num-gpus=0", "--node-ip-address=127.0.0.1",
                  f"--temp-dir={self.temp_dir}", "--object-store-memory=100000000",
                  "--disable-usage-stats"]  # fmt: skip
        with open(os.path.join(self.temp_dir, f"{name}.log"), "wb") as log:
            proc = subprocess.Popen(
                [str(RAY_CLI), "start", *common, *args], env=self.env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.procs.append(proc)

    def start(self) -> None:
        self._start("head", ["--head", f"--port={self.gcs_port}", "--include-dashboard=true",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                             f"--ray-client-server-port={self.client_port}",
                             f"--dashboard-agent-listen-port={self.agent_head}"])  # fmt: skip
        self._wait(lambda: len(self.alive_nodes()) >= 1, "the head node")
        self._start("worker", [f"--address={self.address}",
                               f"--dashboard-agent-listen-port={self.agent_worker}"])  # fmt: skip
        self._wait(lambda: len(self.alive_nodes()) >= 2, "the worker node")

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise StartError(f"{what}: `ray start` exited with {proc.returncode}:\n{self.logs()}")
            try:
                if ready():
                    return
            except OSError:
                pass  # the dashboard is not listening yet
            time.sleep(1.0)
        raise StartError(f"{what} did not come up within {START_TIMEOUT_S:.0f} s:\n{self.logs()}")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def alive_nodes(self) -> list[str]:
        """Node ids of the cluster's live nodes, from the dashboard's state API."""
        req = urllib.request.Request(f"{self.dashboard_url}/api/v0/nodes?limit=100", headers=self.headers())
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = json.load(resp)
        rows = body["data"]["result"]["result"]
        return sorted(r["node_id"] for r in rows if r["state"] == "ALIVE")

    def logs(self) -> str:
        parts = []
        for name in ("head", "worker"):
            path = os.path.join(self.temp_dir, f"{name}.log")
            if os.path.exists(path):
                parts.append(f"--- ray start ({name}):\n" + Path(path).read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def stop(self) -> None:
        """End this cluster: each ``ray start`` first (it stops its node), then leftovers."""
        for proc in reversed(self.procs):  # the worker node before the head
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    pass
        sessions = {proc.pid for proc in self.procs}  # start_new_session: session id = pid
        for pid in _pids(sessions, self.temp_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait(timeout=STOP_TIMEOUT_S)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _pids(sessions: set[int], text: str) -> list[int]:
    """Processes in one of ``sessions``, or whose command line contains ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
            cmdline = Path("/proc", entry, "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        session = int(stat.rsplit(")", 1)[1].split()[3])  # after "pid (comm)": state ppid pgrp session
        if session in sessions or text.encode() in cmdline:
            found.append(int(entry))
    return found


@pytest.fixture(scope="module")
def cluster():
    errors = []
    for _ in range(START_ATTEMPTS):
        c = TwoNodeCluster()
        try:
            c.start()
        except StartError as exc:
            errors.append(str(exc))
            c.stop()
            continue
        try:
            yield c
        finally:
            c.stop()
        return
    pytest.fail(f"no two-node Ray cluster in {START_ATTEMPTS} attempts:\n" + "\n".join(errors))


def _runtime_env() -> dict:
    """cluster/runtime_env.yaml with the repository as working_dir.

    Its ``pip`` section is left out: the nodes run this interpreter, which has the
    package and its dependencies already, and building a virtualenv per node would take
    minutes. Everything else is submitted as a cluster gets it.
    """
    env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    assert "pip" in env, "cluster/runtime_env.yaml must install the package"
    env.pop("pip")
    return {**env, "working_dir": str(REPO)}


def test_a_submitted_job_runs_on_both_nodes_and_completes(cluster, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    midi = tmp_path / "midi"
    midi.mkdir()
    for i in range(SONGS):
        (midi / f"song{i}.mid").write_bytes(multitrack_midi(seconds=2.0 + i, bpm=100.0 + 10 * i))
    out = tmp_path / "rendered"
    nodes = cluster.alive_nodes()
    assert len(nodes) == 2

    client = JobSubmissionClient(cluster.dashboard_url, headers=cluster.headers())
    job_id = client.submit_job(
        entrypoint=f"python -m ray_jobs.render midi={midi} output={out} sample_rate=16000 channels=1",
        runtime_env=_runtime_env(),
    )
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (status := client.get_job_status(job_id)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            pytest.fail(f"job {job_id} still {status} after {JOB_TIMEOUT_S:.0f} s:\n{client.get_job_logs(job_id)[-3000:]}")
        time.sleep(1.0)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, f"job {job_id} {status}:\n{logs[-3000:]}"

    # The job's output is complete: every song rendered, committed by its metadata.yaml.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["failed"] == []
    assert summary["counts"] == {"songs": SONGS, "rendered": SONGS, "skipped_done": 0, "failed": 0}
    for i in range(SONGS):
        track = out / f"Track{i + 1:05d}"
        assert (track / METADATA).exists() and (track / "mix.flac").exists()
    # ... and its work landed on both nodes; the driver ran on the head.
    assert summary["nodes"] == nodes, f"songs rendered on {summary['nodes']}, cluster nodes {nodes}"
    assert client.get_job_info(job_id).driver_node_id in nodes
