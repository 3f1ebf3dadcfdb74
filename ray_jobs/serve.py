"""serve: the web demonstrator on Ray Serve: upload a song, get its stems back.

    sep serve -c configs/serve.yaml
    SEP_SERVE_TOKEN=$(openssl rand -hex 16) sep serve -c configs/serve.yaml host=0.0.0.0

One application (:data:`APP_NAME`): a FastAPI ingress (:mod:`sepcore.serve.app`, the
pages and the JSON API) and one separator deployment per configured model, each
replica loading its checkpoint once (on a GPU when it has one) and separating one song
at a time with the separate job's file path (:mod:`sepcore.serve.work`). Jobs and
their files live in the configured ``output`` storage (:mod:`sepcore.serve.jobs`), so
any ingress replica answers for any job. A separator replica that dies mid-song is
replaced by Serve and the song retried once. See docs/serve.md.

On a cluster (``RAY_ADDRESS``) or on KubeRay (``cluster/kuberay/rayservice-serve.yaml``,
through :func:`app_builder`) the same application runs unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from typing import Any

from sepcore import faults
from sepcore.config import describe, load_config, to_plain
from sepcore.errors import ConfigError, SepError
from sepcore.serve import catalog
from sepcore.serve import work as W
from sepcore.serve.config import ServeConfig, token_for
from sepcore.serve.jobs import JobStore

log = logging.getLogger("sep.serve")

APP_NAME = "sep"
#: Seconds between Serve's health checks of a separator replica (Serve's default: 10): a dead
#: replica is noticed, and replaced, that much sooner.
HEALTH_CHECK_S = 2.0
#: Seconds between a stopping replica's checks for requests still running (Serve's default: 2);
#: a replica still busy is stopped after Serve's graceful_shutdown_timeout_s (20 s).
SHUTDOWN_POLL_S = 0.5
#: Environment variables handed to the separator replicas when set here (fault drills).
PASSED_ENV = (faults.ENV,)


def load(path: str | None, overrides: list[str] | None = None) -> ServeConfig:
    """The validated configuration of ``path`` with ``key=value`` overrides (ConfigError)."""
    return load_config(ServeConfig, path, overrides or [])


def describe_models(cfg: ServeConfig) -> list[dict[str, Any]]:
    """Each configured model's card (:func:`sepcore.serve.catalog.model_card`), read from its
    checkpoint's meta; ConfigError naming the model when one is missing or no separator."""
    from sepcore.separate import separator as SP

    cards = []
    for i, entry in enumerate(cfg.models):
        try:
            meta = SP.describe(entry.checkpoint)
            settings = W.separation_settings(cfg, entry.checkpoint, meta)
        except SepError as exc:
            raise ConfigError(f"models.{i}.checkpoint", f"{entry.name}: {exc}") from exc
        cards.append(catalog.model_card(entry, meta, settings.all_stems))
    return cards


class SeparatorReplica:
    """A separator deployment's replica: one model, loaded once, one song at a time."""

    def __init__(self, cfg_plain: dict[str, Any], name: str):
        import torch

        from sepcore.separate import separator as SP

        cfg = ServeConfig.model_validate(cfg_plain)
        entry = cfg.model(name)
        assert entry is not None
        torch.set_num_threads(cfg.separator.threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        meta = SP.describe(entry.checkpoint)
        self.settings = W.separation_settings(cfg, entry.checkpoint, meta).model_copy(update={"device": device})
        self.separator, _ = SP.build(entry.checkpoint, self.settings, device)
        self.cfg, self.store = cfg, JobStore(cfg.output, cfg.results_ttl_hours)
        log.info("serve: model %s loaded on %s", name, device)

    def separate(self, job_id: str, stems: list[str]) -> str:
        """Separate job ``job_id`` into ``stems``; returns its final state."""
        return str(W.run_job(self.separator, self.settings, self.store, job_id, stems, self.cfg)["state"])


class Ingress:
    """The HTTP ingress: the app of :func:`sepcore.serve.app.make_app`, jobs sent to the
    separator deployments through their handles, each retried once when its replica dies."""

    def __init__(self, cfg_plain: dict[str, Any], token: str | None, cards: list[dict[str, Any]],
                 handles: dict[str, Any]):  # fmt: skip
        self.cfg = ServeConfig.model_validate(cfg_plain)
        self.token, self.cards, self.handles = token, cards, handles
        self.store = JobStore(self.cfg.output, self.cfg.results_ttl_hours)
        self._tasks: set[asyncio.Task[None]] = set()

    def __serve_build_asgi_app__(self) -> Any:
        from sepcore.serve.app import make_app

        return make_app(self.cfg, self.token, self.cards, self)

    async def submit(self, job_id: str, model: str, stems: list[str]) -> None:
        task = asyncio.get_running_loop().create_task(self._run(job_id, model, stems))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job_id: str, model: str, stems: list[str]) -> None:
        from ray.exceptions import RayActorError

        for attempt in (1, 2):
            try:
                await self.handles[model].separate.remote(job_id, stems)
                return
            except RayActorError as exc:  # the replica's process died; Serve starts another
                if attempt == 1:
                    log.warning("serve: job %s: the separator replica died (%s); retrying once", job_id, exc)
                    continue
                message = (f"the separator's process died on this input twice ({type(exc).__name__}); "
                           "it was retried once")  # fmt: skip
            except Exception as exc:  # Serve refused it (a full queue) or the app is shutting down
                message = f"the separator could not take the job: {type(exc).__name__}: {exc}"
            log.error("serve: job %s failed: %s", job_id, message)
            await asyncio.to_thread(self._fail, job_id, message)
            return

    def _fail(self, job_id: str, message: str) -> None:
        try:
            self.store.update(job_id, state="error", error=message)
        except SepError as exc:
            log.error("serve: cannot record the failure of job %s: %s", job_id, exc)


def build_app(cfg: ServeConfig, token: str | None) -> Any:
    """The Serve application of ``cfg`` (call with Ray initialised: it looks for GPUs)."""
    import ray
    from ray import serve

    cards = describe_models(cfg)
    rep = cfg.separator
    gpus = rep.num_gpus if rep.num_gpus is not None else (1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0)
    actor: dict[str, Any] = {"num_cpus": rep.num_cpus, "num_gpus": gpus}
    env = {k: os.environ[k] for k in PASSED_ENV if os.environ.get(k)}
    if env:
        actor["runtime_env"] = {"env_vars": env}
    scaling: dict[str, Any] = (
        {"num_replicas": rep.max_replicas} if rep.min_replicas == rep.max_replicas else
        {"autoscaling_config": {"min_replicas": rep.min_replicas, "max_replicas": rep.max_replicas,
                                "target_ongoing_requests": rep.target_ongoing_requests}})  # fmt: skip
    plain = to_plain(cfg)
    handles = {
        entry.name: serve.deployment(SeparatorReplica).options(
            name=f"separator-{entry.name}", ray_actor_options=actor, max_ongoing_requests=1,
            max_queued_requests=rep.max_queued_requests, health_check_period_s=HEALTH_CHECK_S,
            graceful_shutdown_wait_loop_s=SHUTDOWN_POLL_S, **scaling,
        ).bind(plain, entry.name)
        for entry in cfg.models
    }  # fmt: skip
    ingress = serve.deployment(serve.ingress()(Ingress)).options(
        name="ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=200,
        graceful_shutdown_wait_loop_s=SHUTDOWN_POLL_S,
    )
    return ingress.bind(plain, token, cards, handles)


def app_builder(args: dict[str, Any]) -> Any:
    """The application for a Serve config file (KubeRay's ``serveConfigV2``):
    ``import_path: ray_jobs.serve:app_builder`` with ``args: {config: <yaml>, overrides: [...]}``.
    Host and port there come from the Serve config's ``http_options``."""
    cfg = load(args.get("config"), list(args.get("overrides") or []))
    return build_app(cfg, token_for(cfg))


def start(cfg: ServeConfig) -> str:
    """Deploy the application on the current Ray (local or ``RAY_ADDRESS``), wait until every
    replica is up, and return the URL it serves."""
    from ray import serve

    token = token_for(cfg)
    app = build_app(cfg, token)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    except RuntimeError as exc:  # a replica's constructor failed (Serve gives its traceback)
        raise SepError(f"the application did not start: {exc}") from exc
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
    return f"http://{host}:{cfg.port}"


def stop(shutdown: bool = True) -> None:
    """Delete the application; with ``shutdown``, stop Serve as well."""
    from ray import serve

    try:
        serve.delete(APP_NAME)
    finally:
        if shutdown:
            serve.shutdown()


def _parser() -> argparse.ArgumentParser:
    keys = "\n".join(describe(ServeConfig))
    parser = argparse.ArgumentParser(
        prog="sep serve", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"configuration keys (set in the YAML file or as key=value):\n{keys}\n\n"
        "Ray: connects to RAY_ADDRESS when it is set, else starts a local Ray. Ctrl-C or SIGTERM stops.",
    )  # fmt: skip
    parser.add_argument("-c", "--config", help="YAML file with the server's keys")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. port=8080")
    return parser


def main(argv: list[str] | None = None) -> int:
    import ray

    from ray_jobs.common import init_ray
    from sepcore.console import setup_logging

    args = _parser().parse_args(argv)
    try:
        cfg = load(args.config, args.overrides)
        token = token_for(cfg)
    except ConfigError as exc:
        print(f"sep serve: error: {exc}", file=sys.stderr)
        return 2
    setup_logging()
    local = not os.environ.get("RAY_ADDRESS")
    init_ray(cfg.num_cpus)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after Ray's start-up, which installs its own
        signal.signal(sig, lambda *_: stopping.set())
    try:
        url = start(cfg)
    except ConfigError as exc:
        print(f"sep serve: error: {exc}", file=sys.stderr)
        return 2
    except SepError as exc:
        print(f"sep serve: failed: {exc}", file=sys.stderr)
        return 1
    print(f"sep serve: serving on {url}{' (token required: open ' + url + '/?token=...)' if token else ''}", flush=True)
    print(f"sep serve: {len(cfg.models)} model(s): {', '.join(m.name for m in cfg.models)}; results in "
          f"{cfg.output}; Ctrl-C stops", flush=True)  # fmt: skip
    while not stopping.wait(1.0):
        pass
    print("sep serve: stopping", flush=True)
    stop(shutdown=local)
    if local:
        ray.shutdown()
    print("sep serve: stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
