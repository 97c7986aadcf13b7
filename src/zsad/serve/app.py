"""The HTTP API and the web page, over :class:`~zsad.serve.service.InspectionService`.

Routes (the OpenAPI page is at ``/docs``):

* ``GET /health`` — 200 with the model's description once the service is ready;
* ``POST /products`` — multipart ``name``, ``class_name``, repeated file field ``references`` → 201;
* ``GET /products``, ``GET /products/{name}``;
* ``POST /products/{name}/inspect`` — repeated file field ``images`` → 200, one object per image;
* ``GET /inspections?product=&decision=&since=&until=&limit=&offset=`` — past inspections, newest first;
* ``GET /inspections/{id}``, ``GET /inspections/{id}/overlay`` (PNG);
* ``GET /`` — the web page.

Every error is a JSON object ``{"error": "<one line naming the upload and the problem>"}`` with a 4xx
status (the service keeps serving). With a token, every route but ``/`` and ``/health`` needs it, as
``Authorization: Bearer <token>`` or ``?token=<token>`` (so ``<img>`` tags on the page can load
overlays).
"""

from __future__ import annotations

import asyncio
import hmac
from importlib import resources
from typing import Annotated

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from zsad import __version__
from zsad.errors import ConfigError, DataError, TooLargeError, ZsadError
from zsad.serve.service import Conflict, InspectionService, NotFound, Upload

PUBLIC = {"/", "/health", "/docs", "/openapi.json", "/docs/oauth2-redirect"}


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


def create_app(service: InspectionService, token: str | None = None) -> FastAPI:
    app = FastAPI(title="zsad inspection service", version=__version__,
                  description="Register products from a few normal images, inspect images, browse the history.")
    limit = service.limits.max_upload_bytes

    @app.middleware("http")
    async def check_token(request: Request, call_next):
        if token and request.url.path not in PUBLIC:
            header = request.headers.get("authorization", "")
            given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else \
                request.query_params.get("token", "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                return JSONResponse({"error": "missing or wrong token: send Authorization: Bearer <token>"},
                                    status_code=401)
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
    async def health() -> dict:
        return {"status": "ok", "version": __version__, **service.describe,
                "few_shot": service.few_shot, "zero_shot": service.zero_shot, "model_calls": service.worker.calls}

    @app.post("/products", status_code=201)
    async def create_product(name: Annotated[str, Form()], class_name: Annotated[str, Form()],
                             references: Annotated[list[UploadFile], File()]) -> dict:
        uploads = await _read(references, limit)
        future = await run_in_threadpool(service.create_product, name, class_name, uploads)
        return (await asyncio.wrap_future(future)).public()

    @app.get("/products")
    async def products() -> list[dict]:
        return [p.public() for p in await run_in_threadpool(service.store.products)]

    @app.get("/products/{name}")
    async def product(name: str) -> dict:
        return (await run_in_threadpool(service.product, name)).public()

    @app.post("/products/{name}/inspect")
    async def inspect(name: str, images: Annotated[list[UploadFile], File()]) -> list[dict]:
        uploads = await _read(images, limit)
        product, decoded, future = await run_in_threadpool(service.inspect, name, uploads)
        results = await asyncio.wrap_future(future)
        return await run_in_threadpool(service.record, product, decoded, results)

    @app.get("/inspections")
    async def inspections(product: str | None = None, decision: str | None = None, since: float | None = None,
                          until: float | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                          offset: Annotated[int, Query(ge=0)] = 0) -> list[dict]:
        if product is not None:
            await run_in_threadpool(service.product, product)  # 404 for an unknown product
        return await run_in_threadpool(service.store.inspections, product, decision, since, until, limit, offset)

    @app.get("/inspections/{number}")
    async def inspection(number: int) -> dict:
        record = await run_in_threadpool(service.store.inspection, number)
        if record is None:
            raise ApiError(404, f"no inspection {number}")
        return record

    @app.get("/inspections/{number}/overlay", response_class=FileResponse)
    async def overlay(number: int) -> FileResponse:
        record = await run_in_threadpool(service.store.inspection, number)
        if record is None:
            raise ApiError(404, f"no inspection {number}")
        return FileResponse(service.store.path(record["overlay"]), media_type="image/png")

    return app
