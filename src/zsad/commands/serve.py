"""``zsad serve``: the inspection service (HTTP API, web page, SQLite history) on uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path

from zsad.commands.common import add_method_arguments, add_tiling_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the inspection API and web page (products, inspections, history)")
    add_method_arguments(p)
    add_tiling_arguments(p)
    p.add_argument("--model", type=Path, action="append", default=[], metavar="DIR",
                   help="serve an exported model (`zsad export`) as a product named after its folder; repeatable; "
                   "runs on ONNX Runtime or OpenVINO without PyTorch")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1); any other than "
                   "loopback needs --token")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--store", type=Path, default=Path("zsad-store"), help="folder for the SQLite records and "
                   "the images (default zsad-store)")
    p.add_argument("--token", help="require this bearer token on every request except / and /health")
    p.add_argument("--batch-size", type=int, default=8, help="images (or tiles) per model call (default 8)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long the model waits to batch "
                   "concurrent requests (default 5 ms)")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload per image (default 50 MB)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0, help="on SIGTERM, seconds to let requests in "
                   "flight finish before they are cancelled (default 30)")
    p.add_argument("--body-timeout", type=float, default=60.0, help="seconds a request body may stall before the "
                   "request is given up (default 60)")
    p.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    from zsad.errors import ConfigError

    if not is_loopback(args.host) and not args.token:
        raise ConfigError(f"--host {args.host} is reachable from other machines: give --token T so that only "
                          f"holders of the token can use the service")
    if not 0 < args.port < 65536 or args.batch_size < 1 or args.max_wait_ms < 0 or args.max_upload_mb <= 0:
        raise ConfigError("--port must be 1-65535, --batch-size >= 1, --max-wait-ms >= 0, --max-upload-mb > 0")
    if args.shutdown_timeout < 0 or args.body_timeout <= 0:
        raise ConfigError("--shutdown-timeout must be >= 0 and --body-timeout > 0 seconds")
    # The model's OpenMP threads share the CPU with the HTTP threads: idle ones must sleep, not spin (on
    # two cores spinning halved the served throughput). Read when torch loads, so set before importing it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import uvicorn

    from zsad.serve.app import create_app
    from zsad.serve.service import InspectionService, Limits
    from zsad.serve.store import Store

    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=int(args.max_pixels))
    models, describe = _exported(args) if args.model else _method(args)
    service = InspectionService(Store(args.store), models, describe, limits, args.batch_size, args.max_wait_ms / 1000)
    try:
        if args.model:
            models.register(service)
        uvicorn.run(create_app(service, args.token, is_loopback(args.host), args.body_timeout), host=args.host,
                    port=args.port, log_level="warning", timeout_graceful_shutdown=args.shutdown_timeout)
    finally:
        service.close()
    return 0


def _exported(args: argparse.Namespace):
    """Exported models, one product each: no PyTorch is imported."""
    from zsad.errors import ConfigError
    from zsad.serve.models import ExportedModels

    if args.method or args.checkpoint or args.tile is not None:
        raise ConfigError("--model serves exported models, which have their method, product and tiling folded in: "
                          "drop --method, --checkpoint and --tile")
    models = ExportedModels(args.model, args.batch_size)
    return models, {"models": {name: {"method": m.name, "backbone": m.meta.get("backbone", ""),
                                      "runtime": m.meta.get("runtime", ""), "precision": m.meta.get("precision", "")}
                               for name, m in models.models.items()}}


def _method(args: argparse.Namespace):
    """One method on the PyTorch path, shared by every product."""
    from zsad.commands.common import method_from_args, tiling_from_args
    from zsad.engine.checkpoint import stored_thresholds
    from zsad.serve.method import MethodModels

    method, device = method_from_args(args)
    models = MethodModels(method, tiling_from_args(args, method), args.batch_size, args.precision,
                          stored_thresholds(args.checkpoint) if args.checkpoint else None)
    return models, {"method": method.name, "backbone": method.config.backbone,
                    "checkpoint": str(args.checkpoint or ""), "device": str(device)}
