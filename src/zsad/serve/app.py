"""The HTTP API and the web page, over :class:`~zsad.serve.service.InspectionService`.

Routes (the OpenAPI page is at ``/docs``):

* ``GET /health`` — 200 with the model's description once the service is ready;
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

Every error is a JSON object ``{"error": "<one line naming the upload and the problem>"}`` with a 4xx
status (the service keeps serving). With a token, every route but ``/`` and ``/health`` needs it, as
``Authorization: Bearer <token>`` or ``?token=<token>`` (so ``<img>`` tags on the page can load
overlays).
"""

from __future__ import annotations

import asyncio
import csv
import hmac
import io
from importlib import resources
from typing import Annotated, Literal

from fastapi import FastAPI, File, Form, Path, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from zsad import __version__
from zsad.errors import ConfigError, DataError, TooLargeError, ZsadError
from zsad.serve.service import Conflict, InspectionService, NotFound, Upload
from zsad.serve.store import InspectionFilter

Id = Annotated[int, Path(ge=1, le=2**63 - 1)]
CSV_COLUMNS = ("id", "product", "filename", "created", "revision", "score", "decision", "image_threshold", "regions",
               "review", "review_note", "learned")
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


class Review(BaseModel):
    verdict: Literal["normal", "anomalous"]
    note: str = Field("", max_length=2000)
    learn: bool = False


class ProductChange(BaseModel):
    display_name: str | None = None
    target_fpr: float | None = None


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
                             references: Annotated[list[UploadFile], File()] = (),
                             display_name: Annotated[str | None, Form()] = None,
                             target_fpr: Annotated[float | None, Form()] = None) -> dict:
        uploads = await _read(list(references), limit)
        future = await run_in_threadpool(service.create_product, name, class_name, uploads, display_name, target_fpr)
        return (await asyncio.wrap_future(future)).public()

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
    async def add_references(name: str, references: Annotated[list[UploadFile], File()]) -> dict:
        uploads = await _read(references, limit)
        future = await run_in_threadpool(service.add_references, name, uploads)
        return (await asyncio.wrap_future(future)).public()

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
    async def restore(name: str, number: Id) -> dict:
        future = await run_in_threadpool(service.restore, name, number)
        return (await asyncio.wrap_future(future)).public()

    @app.post("/products/{name}/inspect")
    async def inspect(name: str, images: Annotated[list[UploadFile], File()]) -> list[dict]:
        uploads = await _read(images, limit)
        product, decoded, future = await run_in_threadpool(service.inspect, name, uploads)
        results = await asyncio.wrap_future(future)
        return await run_in_threadpool(service.record, product, uploads, decoded, results)

    @app.post("/inspections/{number}/review")
    async def review(number: Id, verdict: Review) -> dict:
        future = await run_in_threadpool(service.review, number, verdict.verdict, verdict.note, verdict.learn)
        return await asyncio.wrap_future(future)

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
