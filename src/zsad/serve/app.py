"""The HTTP API and the web page, over :class:`~zsad.serve.service.InspectionService`.

Routes (the OpenAPI page is at ``/docs``):

* ``GET /health`` — 200 once the service is ready: ``status`` and ``version``, and with the token (or none
  configured) the model's description;
* ``POST /session`` — JSON ``token``: sets the session cookie the web page (and ``/docs``) use, so no token
  ever goes into a URL; ``DELETE /session`` clears it;
* ``POST /products`` — multipart ``name``, ``class_name``, optional ``display_name``, ``target_fpr`` and
  repeated file field ``references`` (none for a zero-shot checkpoint with stored thresholds) → 201;
* ``GET /products``, ``GET /products/{name}`` (names ignore case); ``PATCH /products/{name}`` — JSON
  ``display_name``, ``target_fpr``; ``DELETE /products/{name}`` — the history stays, marked;
* ``GET|POST /products/{name}/references``, ``DELETE /products/{name}/references/{id}``,
  ``GET /products/{name}/references/{id}/image``;
* ``GET /products/{name}/revisions``, ``POST /products/{name}/revisions/{n}/restore``;
* ``POST /products/{name}/inspect`` — repeated file field ``images`` → 200, one object per image;
* ``POST /inspections/{id}/review`` — JSON ``verdict``, ``note``, ``learn``;
* ``GET /inspections?product=&decision=&reviewed=&filename=&since=&until=&limit=&offset=&format=`` — past
  inspections, newest first (total in ``X-Total-Count``; ``format=csv`` for a spreadsheet);
* ``GET /inspections/{id}``, ``GET /inspections/{id}/overlay`` (PNG), ``GET /inspections/{id}/image``;
* ``GET /`` — the web page.

Every POST that writes takes an ``Idempotency-Key`` header: a retry with the same key (and the same request)
gets the first response again and records nothing new; the same key on another request is refused (422), on
one still being served is busy (409). An inspection's records and its response commit in one transaction,
and a request of several images records all of them or none.

Every error is a JSON object ``{"error": "<one line naming the upload and the problem>"}`` with a 4xx
status (the service keeps serving). With a token, every route but ``/`` (the page, which asks for it),
``/health`` and ``/session`` needs it — ``/docs`` and ``/openapi.json`` included, whose schema declares the
bearer scheme — as ``Authorization: Bearer <token>`` or the session cookie. Writes (POST, PATCH, DELETE)
from another origin are refused (403) even on loopback without a token: a page elsewhere cannot drive the
service through the operator's browser; and a loopback server answers only requests addressed to a
loopback name, so a rebound DNS name cannot reach it either.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import hmac
import io
import ipaddress
import json
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, File, Form, Header, Path, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from zsad import __version__
from zsad.errors import ConfigError, DataError, TooLargeError, ZsadError
from zsad.serve.service import Conflict, InspectionService, NotFound, Upload
from zsad.serve.store import InspectionFilter

Id = Annotated[int, Path(ge=1, le=2**63 - 1)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200,
                                              pattern=r"^[\x21-\x7e]+$")]
CSV_COLUMNS = ("id", "product", "filename", "created", "revision", "score", "decision", "image_threshold", "regions",
               "review", "review_note", "learned")
PUBLIC = {"/", "/health", "/session"}
WRITES = {"POST", "PUT", "PATCH", "DELETE"}
SESSION_COOKIE = "zsad_session"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _status(err: ZsadError) -> int:
    if isinstance(err, NotFound):
        return 404
    if isinstance(err, Conflict):
        return 409
    if isinstance(err, TooLargeError):
        return 413
    return 422 if isinstance(err, (DataError, ConfigError)) else 400


async def _read(files: list[UploadFile], limit: int) -> list[Upload]:
    uploads = []
    for file in files:
        data = await file.read(limit + 1)
        name = file.filename or "upload"
        if len(data) > limit:
            raise ApiError(413, f"image {name} is over the upload limit of {limit / 2**20:.0f} MB")
        uploads.append(Upload(name, data))
    return uploads


class Session(BaseModel):
    token: str = Field(max_length=4096)


class Review(BaseModel):
    verdict: Literal["normal", "anomalous"]
    note: str = Field("", max_length=2000)
    learn: bool = False


class ProductChange(BaseModel):
    display_name: str | None = None
    target_fpr: float | None = None


def create_app(service: InspectionService, token: str | None = None, loopback: bool = True,
               body_timeout: float = 60.0) -> FastAPI:
    """``loopback``: the server listens on a loopback address only (requests must then name one as Host);
    ``body_timeout``: seconds a request body may stall before the request is given up (a stalled client
    would otherwise hold its connection, and a graceful shutdown, forever)."""
    bearer = HTTPBearer(auto_error=False, description="the token `zsad serve --token` was started with")
    app = FastAPI(title="zsad inspection service", version=__version__,
                  description="Register products from a few normal images, inspect images, browse the history.",
                  dependencies=[Depends(bearer)] if token else [])
    limit = service.limits.max_upload_bytes
    app.add_middleware(BodyTimeout, seconds=body_timeout)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        refusal = _foreign(request, loopback)
        if refusal:
            return JSONResponse({"error": refusal}, status_code=403)
        request.state.authorised = not token or hmac.compare_digest(_presented(request).encode(), token.encode())
        if not request.state.authorised and request.url.path not in PUBLIC:
            return JSONResponse({"error": "missing or wrong token: send Authorization: Bearer <token>, or sign in "
                                          "on the page"}, status_code=401)
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(ZsadError)
    async def zsad_error(_: Request, err: ZsadError) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(err).split())}, status_code=_status(err))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in err.errors())
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return resources.files("zsad.serve").joinpath("page.html").read_text()

    @app.get("/health")
    async def health(request: Request) -> dict:
        ready = {"status": "ok", "version": __version__}
        if not request.state.authorised:
            return ready
        return {**ready, **service.describe, "few_shot": service.few_shot, "zero_shot": service.zero_shot,
                "model_calls": service.worker.calls, "token": bool(token)}

    @app.post("/session", status_code=204)
    async def sign_in(session: Session) -> Response:
        if token and not hmac.compare_digest(session.token.encode(), token.encode()):
            raise ApiError(401, "wrong token")
        response = Response(status_code=204)
        if token:
            response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.delete("/session", status_code=204)
    async def sign_out() -> Response:
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
        return response

    @app.post("/products", status_code=201)
    async def create_product(name: Annotated[str, Form()], class_name: Annotated[str, Form()],
                             references: Annotated[list[UploadFile], File()] = (),
                             display_name: Annotated[str | None, Form()] = None,
                             target_fpr: Annotated[float | None, Form()] = None,
                             key: IdempotencyKey = None) -> Response:
        uploads = await _read(list(references), limit)

        async def create(_: str | None) -> dict:
            future = await run_in_threadpool(service.create_product, name, class_name, uploads, display_name,
                                             target_fpr)
            return (await asyncio.wrap_future(future)).public()

        fields = [name, class_name, display_name, target_fpr]
        return await _idempotent(service, key, _fingerprint("create", fields, uploads), 201, create)

    @app.get("/products")
    async def products() -> list[dict]:
        return [p.public() for p in await run_in_threadpool(service.store.products)]

    @app.get("/products/{name}")
    async def product(name: str) -> dict:
        return (await run_in_threadpool(service.product, name)).public()

    @app.patch("/products/{name}")
    async def change_product(name: str, change: ProductChange) -> dict:
        future = await run_in_threadpool(service.update_product, name, change.display_name, change.target_fpr)
        return (await asyncio.wrap_future(future)).public()

    @app.delete("/products/{name}")
    async def delete_product(name: str) -> dict:
        product = await run_in_threadpool(service.product, name)
        await run_in_threadpool(service.delete_product, name)
        return {"name": product.name, "deleted": True}

    @app.get("/products/{name}/references")
    async def references(name: str) -> list[dict]:
        product = await run_in_threadpool(service.product, name)
        return [image.public(product.name) for image in product.images]

    @app.post("/products/{name}/references", status_code=201)
    async def add_references(name: str, references: Annotated[list[UploadFile], File()],
                             key: IdempotencyKey = None) -> Response:
        uploads = await _read(references, limit)

        async def add(_: str | None) -> dict:
            future = await run_in_threadpool(service.add_references, name, uploads)
            return (await asyncio.wrap_future(future)).public()

        return await _idempotent(service, key, _fingerprint("references", [name], uploads), 201, add)

    @app.delete("/products/{name}/references/{number}")
    async def remove_reference(name: str, number: Id) -> dict:
        future = await run_in_threadpool(service.remove_reference, name, number)
        return (await asyncio.wrap_future(future)).public()

    @app.get("/products/{name}/references/{number}/image", response_class=FileResponse)
    async def reference_image(name: str, number: Id) -> FileResponse:
        product = await run_in_threadpool(service.product, name)
        image = await run_in_threadpool(service.store.image, product, number)
        return _file(service, image.path)

    @app.get("/products/{name}/revisions")
    async def revisions(name: str) -> list[dict]:
        product = await run_in_threadpool(service.product, name)
        return [r.public() for r in await run_in_threadpool(service.store.revisions, product)]

    @app.post("/products/{name}/revisions/{number}/restore")
    async def restore(name: str, number: Id, key: IdempotencyKey = None) -> Response:
        async def run(_: str | None) -> dict:
            future = await run_in_threadpool(service.restore, name, number)
            return (await asyncio.wrap_future(future)).public()

        return await _idempotent(service, key, _fingerprint("restore", [name, number]), 200, run)

    @app.post("/products/{name}/inspect")
    async def inspect(name: str, images: Annotated[list[UploadFile], File()], key: IdempotencyKey = None) -> Response:
        uploads = await _read(images, limit)

        async def run(request: str | None) -> list[dict]:
            product, decoded, future = await run_in_threadpool(service.inspect, name, uploads)
            results = await asyncio.wrap_future(future)
            return await run_in_threadpool(service.record, product, uploads, decoded, results, request)

        return await _idempotent(service, key, _fingerprint("inspect", [name], uploads), 200, run)

    @app.post("/inspections/{number}/review")
    async def review(number: Id, verdict: Review, key: IdempotencyKey = None) -> Response:
        async def run(_: str | None) -> dict:
            future = await run_in_threadpool(service.review, number, verdict.verdict, verdict.note, verdict.learn)
            return await asyncio.wrap_future(future)

        return await _idempotent(service, key, _fingerprint("review", [number, verdict.model_dump()]), 200, run)

    @app.get("/inspections")
    async def inspections(response: Response, product: str | None = None,
                          decision: Literal["normal", "anomalous"] | None = None, reviewed: bool | None = None,
                          filename: str | None = None, since: float | None = None, until: float | None = None,
                          limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                          offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
                          format: Literal["json", "csv"] = "json"):
        if product is not None and not await run_in_threadpool(service.store.known_name, product):
            raise ApiError(404, f"no product named {product!r}")
        selection = InspectionFilter(product, decision, reviewed, filename, since, until)
        rows = await run_in_threadpool(service.store.inspections, selection, limit, offset)
        total = await run_in_threadpool(service.store.count_inspections, selection)
        headers = {"X-Total-Count": str(total)}
        if format == "csv":
            return Response(_csv(rows), media_type="text/csv", headers={
                **headers, "Content-Disposition": 'attachment; filename="inspections.csv"'})
        response.headers.update(headers)
        return rows

    @app.get("/inspections/{number}")
    async def inspection(number: Id) -> dict:
        return await _inspection(service, number)

    @app.get("/inspections/{number}/overlay", response_class=FileResponse)
    async def overlay(number: Id) -> FileResponse:
        return _file(service, (await _inspection(service, number))["overlay"])

    @app.get("/inspections/{number}/image", response_class=FileResponse)
    async def image(number: Id) -> FileResponse:
        await _inspection(service, number)  # 404 for an unknown inspection
        path = await run_in_threadpool(service.store.inspection_image, number)
        if not path:
            raise ApiError(404, f"inspection {number} was recorded without its image")
        return _file(service, path)

    return app


class BodyTimeout:
    """ASGI middleware: a request whose body stalls for ``seconds`` reads as a client that went away."""

    def __init__(self, app, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def timed_receive():
            try:
                return await asyncio.wait_for(receive(), self.seconds)
            except TimeoutError:
                return {"type": "http.disconnect"}

        await self.app(scope, timed_receive, send)


def _loopback_name(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _fingerprint(route: str, fields: list, uploads: list[Upload] = ()) -> str:
    """What makes two requests the same request: the route, its fields and every upload's name and bytes."""
    digest = hashlib.sha256(json.dumps([route, fields], sort_keys=True, default=str).encode())
    for upload in uploads:
        digest.update(upload.filename.encode() + b"\0" + hashlib.sha256(upload.data).digest())
    return digest.hexdigest()


async def _idempotent(service: InspectionService, key: str | None, fingerprint: str, status: int,
                      work: Callable[[str | None], Awaitable[object]]) -> Response:
    """Run ``work`` once per Idempotency-Key: a retry gets the stored first response (marked
    ``Idempotent-Replayed: true``); a failed request frees its key. ``work`` is given the key, to commit the
    response with its records where it can."""
    if key is None:
        return JSONResponse(await work(None), status_code=status)
    stored = await run_in_threadpool(service.store.claim_request, key, fingerprint)
    if stored is not None:
        return Response(stored[1], status_code=stored[0], media_type="application/json",
                        headers={"Idempotent-Replayed": "true"})
    try:
        body = await work(key)
    except BaseException:
        await run_in_threadpool(service.store.release_request, key)
        raise
    await run_in_threadpool(service.store.finish_request, key, status, json.dumps(body))
    return JSONResponse(body, status_code=status)


def _presented(request: Request) -> str:
    """The token a request carries: its bearer header, else the page's session cookie (never a URL)."""
    header = request.headers.get("authorization", "")
    if header.startswith("Bearer "):
        return header.removeprefix("Bearer ").strip()
    return request.cookies.get(SESSION_COOKIE, "")


def _foreign(request: Request, loopback: bool) -> str:
    """Why a request is refused as coming from elsewhere, or "": a write that a browser marks cross-site or
    whose Origin is not the server it is sent to; on a loopback server, any request not addressed to a
    loopback name (a DNS name rebound to 127.0.0.1)."""
    host = request.headers.get("host", "")
    if loopback and not _loopback_name(urlsplit(f"//{host}").hostname or ""):
        return f"this service listens on loopback only and is not {host!r}"
    if request.method not in WRITES:
        return ""
    origin = request.headers.get("origin")
    if request.headers.get("sec-fetch-site") == "cross-site" or (
            origin is not None and urlsplit(origin).netloc.lower() != host.lower()):
        return f"a write from another origin ({origin or 'cross-site'}) is refused: use the service's own page or a " \
               f"client that sends no Origin"
    return ""


async def _inspection(service: InspectionService, number: int) -> dict:
    record = await run_in_threadpool(service.store.inspection, number)
    if record is None:
        raise ApiError(404, f"no inspection {number}")
    return record


def _file(service: InspectionService, relative: str) -> FileResponse:
    path = service.store.path(relative)
    if not relative or not path.is_file():
        raise ApiError(404, f"{relative or 'the file'} is missing from the store")
    return FileResponse(path)


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        review = r["review"] or {}
        writer.writerow([r["id"], r["product"], r["filename"], f"{r['created']:.3f}", r["revision"],
                         f"{r['score']:.6g}", r["decision"], r["thresholds"]["image"], len(r["regions"]),
                         review.get("verdict", ""), review.get("note", ""), review.get("learn", "")])
    return buffer.getvalue()
