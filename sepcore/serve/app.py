"""The demonstrator's HTTP interface: a FastAPI app of pages and a JSON API.

:func:`make_app` builds it around a :class:`Backend` that runs separations (Ray Serve's
separator deployments in :mod:`ray_jobs.serve`). Routes:

* pages: ``GET /`` (upload form), ``POST /separate`` (the form: 303 to the job's page),
  ``GET /jobs/<id>``, ``GET /library``, ``GET /models``;
* API: ``POST /api/separate`` (multipart ``file`` or form field ``uri``, ``model``,
  optional repeated ``stems``) -> ``{"id": ...}``; ``GET /api/jobs/<id>`` -> state,
  error, stem URLs; ``GET /api/models``;
* files: ``GET /jobs/<id>/files/<name>`` (only the names the job recorded) and
  ``GET /library/<run>/<row>/<stem>`` (a stem a separate manifest names).

Errors are JSON ``{"error": message}`` under ``/api/`` and a short page elsewhere, with
a 4xx status. With a token, every request needs ``Authorization: Bearer <token>`` or the
``sep_token`` cookie, which a page visited once with ``?token=<token>`` sets.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import shutil
import tempfile
from typing import Any, Protocol
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from sepcore.errors import SepError
from sepcore.io import storage
from sepcore.serve import catalog, pages
from sepcore.serve import jobs as J
from sepcore.serve.config import ServeConfig
from sepcore.serve.work import media_type

log = logging.getLogger("sep.serve")

COOKIE = "sep_token"
#: Bytes a multipart body may hold beyond the upload itself (boundaries, other fields).
FORM_OVERHEAD = 64 * 1024


class Backend(Protocol):
    async def submit(self, job_id: str, model: str, stems: list[str]) -> None:
        """Start separating job ``job_id`` (its input is in the store) in the background."""


def make_app(cfg: ServeConfig, token: str | None, cards: list[dict[str, Any]], backend: Backend) -> FastAPI:
    """The app serving ``cards`` (:func:`sepcore.serve.catalog.model_card`, one per configured
    model, in order), running jobs on ``backend``; ``token`` None: no token asked."""
    store = J.JobStore(cfg.output, cfg.results_ttl_hours)
    by_name = {c["name"]: c for c in cards}
    app = FastAPI(title="sep serve", docs_url=None, redoc_url=None, openapi_url=None)
    sweeper: list[asyncio.Task[None]] = []

    def error(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status)
        return HTMLResponse(pages.message_page(status, message), status)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        message = "no such page" if exc.detail == "Not Found" else str(exc.detail)
        return error(request, exc.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return error(request, 400, f"invalid request: {exc.errors()[0].get('msg')}")

    @app.exception_handler(J.BadInput)
    async def _bad_input(request: Request, exc: J.BadInput) -> Response:
        return error(request, exc.status, str(exc))

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Response:
        if not sweeper:  # results expire while the server runs
            sweeper.append(asyncio.create_task(_sweep(store, cfg.results_ttl_hours)))
        if token is None:
            return await call_next(request)
        given = request.query_params.get("token")
        if given is not None and not request.url.path.startswith("/api/"):
            if not hmac.compare_digest(given.encode(), token.encode()):
                return error(request, 401, "wrong token")
            query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            target = request.url.path + (f"?{query}" if query else "")
            redirect = RedirectResponse(target, 303)
            redirect.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https")
            return redirect
        auth = request.headers.get("authorization", "")
        candidate = auth[7:].strip() if auth.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
        if candidate and hmac.compare_digest(candidate.encode(), token.encode()):
            return await call_next(request)
        answer = error(request, 401, "this server needs a token: send 'Authorization: Bearer <token>', "
                       "or open a page once with ?token=<token>")  # fmt: skip
        answer.headers["WWW-Authenticate"] = "Bearer"
        return answer

    async def submit(request: Request) -> str:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > cfg.max_upload_bytes + FORM_OVERHEAD:
            J.check_size(int(length), "the upload", cfg.max_upload_bytes)
        form = await request.form(max_files=1, max_fields=100)
        model = str(form.get("model") or cards[0]["name"])
        card = by_name.get(model)
        if card is None:
            raise J.BadInput(f"unknown model {model!r}; this server has: {', '.join(by_name)}")
        stems = [str(s) for s in form.getlist("stems")] or list(card["stems"])
        unknown = [s for s in stems if s not in card["stems"]]
        if unknown:
            raise J.BadInput(f"unknown stem(s) {', '.join(unknown)}: {model} separates {', '.join(card['stems'])}")
        upload, uri = form.get("file"), str(form.get("uri") or "").strip()
        has_file = isinstance(upload, UploadFile) and bool(upload.filename)
        if has_file and uri:
            raise J.BadInput("give a file or a URI, not both")
        if not has_file and not uri:
            raise J.BadInput("give a file (field 'file') or a URI (field 'uri')")
        job_id = J.new_id()
        if has_file:
            assert isinstance(upload, UploadFile)
            fields = await run_in_threadpool(_take_upload, store, cfg, job_id, upload)
        else:
            fields = await run_in_threadpool(_take_uri, store, cfg, job_id, uri)
        store.create(job_id, model=model, stems=[s for s in card["stems"] if s in stems], format=cfg.format, **fields)
        await backend.submit(job_id, model, stems)
        log.info("serve: job %s queued (%s, model %s)", job_id, fields["input_name"], model)
        return job_id

    def job_or_404(job_id: str) -> dict[str, Any]:
        job = store.read(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id} (unknown, or its results expired after "
                                f"{cfg.results_ttl_hours:g} h)")  # fmt: skip
        return job

    @app.get("/", response_class=HTMLResponse)
    async def separate_form() -> str:
        return pages.separate_page(cards, cfg)

    @app.post("/separate")
    async def separate_form_post(request: Request) -> Response:
        return RedirectResponse(f"/jobs/{await submit(request)}", 303)

    @app.post("/api/separate")
    async def api_separate(request: Request) -> dict[str, str]:
        return {"id": await submit(request)}

    @app.get("/api/jobs/{job_id}")
    async def api_job(job_id: str) -> dict[str, Any]:
        return job_view(job_or_404(job_id))

    @app.get("/api/models")
    async def api_models() -> dict[str, Any]:
        return {"models": cards}

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    async def job_page(job_id: str) -> str:
        job = job_or_404(job_id)
        return pages.job_page(job, job_view(job))

    @app.get("/jobs/{job_id}/files/{name}")
    async def job_file(job_id: str, name: str) -> Response:
        uri = store.file(job_id, name)
        if uri is None:
            raise HTTPException(404, f"job {job_id} has no file {name}")
        return _file(uri, name)

    @app.get("/library", response_class=HTMLResponse)
    async def library() -> str:
        runs = await run_in_threadpool(lambda: [catalog.library_run(o) for o in cfg.library_outputs])
        return pages.library_page(runs)

    @app.get("/library/{run}/{row}/{stem}")
    async def library_file(run: int, row: int, stem: str) -> Response:
        if not 0 <= run < len(cfg.library_outputs):
            raise HTTPException(404, f"no library output {run}")
        uri = await run_in_threadpool(catalog.library_file, cfg.library_outputs[run], row, stem)
        if uri is None:
            raise HTTPException(404, f"library output {run} has no stem {stem} in row {row}")
        return _file(uri, storage.basename(uri))

    @app.get("/models", response_class=HTMLResponse)
    async def models() -> str:
        return pages.models_page(cards)

    return app


def job_view(job: dict[str, Any]) -> dict[str, Any]:
    """The API's view of a job: state, error, and the URLs of what it made."""
    base, files = f"/jobs/{job['id']}/files/", job.get("files", {})
    ext = job.get("format", "flac")
    done = job["state"] == "done"
    return {
        "id": job["id"], "state": job["state"], "error": job.get("error"), "model": job.get("model"),
        "input": job.get("input_name"), "duration_s": job.get("duration_s"), "seconds": job.get("seconds"),
        "attempts": job.get("attempts", 0),
        "stems": {s: base + f"{s}.{ext}" for s in job.get("stems", []) if done and f"{s}.{ext}" in files},
        "mixture": base + "mixture.flac" if "mixture.flac" in files else None,
        "zip": base + "stems.zip" if "stems.zip" in files else None,
        "spectrograms": {n[: -len(".png")]: base + n for n in files if n.endswith(".png")},
    }  # fmt: skip


def _file(uri: str, name: str) -> Response:
    headers = {"Content-Disposition": f'attachment; filename="{name}"'} if name.endswith(".zip") else None
    if storage.is_local(uri):
        path = storage.local_path(uri)
        if not os.path.isfile(path):
            raise HTTPException(404, f"{name} is gone")
        return FileResponse(path, media_type=media_type(name), headers=headers)
    try:
        data = storage.read_bytes(uri)
    except SepError as exc:
        raise HTTPException(404, f"{name} is gone") from exc
    return Response(data, media_type=media_type(name), headers=headers)


def _take_upload(store: J.JobStore, cfg: ServeConfig, job_id: str, upload: UploadFile) -> dict[str, Any]:
    """Check an upload and keep it (``input.<ext>``) with its mixture; the job's fields."""
    name = os.path.basename((upload.filename or "upload").replace("\\", "/"))[:200] or "upload"
    scratch = tempfile.mkdtemp(prefix="sep-serve-in-")
    try:
        local = os.path.join(scratch, "input" + J.extension(name))
        size = _copy_limited(upload.file, local, cfg.max_upload_bytes, name)
        J.check_size(size, name, cfg.max_upload_bytes)
        stored = store.uri(job_id, "input" + J.extension(name))
        fields = _with_mixture(store, cfg, job_id, local, name, scratch)
        storage.upload(local, stored)
        return {**fields, "input_uri": stored, "input_name": name, "input_size": size}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _take_uri(store: J.JobStore, cfg: ServeConfig, job_id: str, uri: str) -> dict[str, Any]:
    """Check a named input (below the allowed prefixes, there, small enough, audio); the job's fields."""
    norm = J.check_uri(uri, cfg.prefixes())
    try:
        size = int(storage.info(norm)["size"])
    except SepError as exc:
        raise J.BadInput(f"{uri}: no such file ({exc})") from exc
    name = storage.basename(norm)
    J.check_size(size, name, cfg.max_upload_bytes)
    scratch = tempfile.mkdtemp(prefix="sep-serve-in-")
    try:
        local = os.path.join(scratch, "input" + J.extension(name))
        storage.download(norm, local)
        fields = _with_mixture(store, cfg, job_id, local, name, scratch)
        return {**fields, "input_uri": norm, "input_name": name, "input_size": size}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _with_mixture(store: J.JobStore, cfg: ServeConfig, job_id: str, local: str, name: str,
                  scratch: str) -> dict[str, Any]:  # fmt: skip
    decoded = J.check_input(local, name, scratch, cfg.max_seconds, cfg.decode_timeout_s)
    mixture = os.path.join(scratch, "mixture.flac")
    J.write_mixture(decoded, mixture)
    storage.upload(mixture, store.uri(job_id, "mixture.flac"))
    return {"duration_s": decoded.duration, "files": {"mixture.flac": "mixture.flac"}}


def _copy_limited(src: Any, path: str, max_bytes: int, name: str) -> int:
    """Copy an upload to ``path``; 413 as soon as it passes ``max_bytes``."""
    size = 0
    src.seek(0)
    with open(path, "wb") as dst:
        while chunk := src.read(1 << 20):
            size += len(chunk)
            if size > max_bytes:
                J.check_size(size, name, max_bytes)
            dst.write(chunk)
    return size


async def _sweep(store: J.JobStore, ttl_hours: float) -> None:
    """Delete expired jobs now and then (a quarter of the time to live, at most every 10 minutes)."""
    every = min(600.0, max(1.0, ttl_hours * 900.0))
    while True:
        try:
            deleted = await run_in_threadpool(store.expire)
            if deleted:
                log.info("serve: deleted %d expired job(s)", deleted)
        except Exception:  # a storage hiccup must not stop the sweeps
            log.exception("serve: expiring results failed")
        await asyncio.sleep(every)
