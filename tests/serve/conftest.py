"""A real `zsad serve` process on a free loopback port, started and stopped by the tests, and images."""

from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

SERVE = [sys.executable, "-m", "zsad", "serve", "--method", "knn", "--backbone", "clip-tiny", "--image-size", "64",
         "--device", "cpu"]
SIZE = 96
DEFECT = (30, 60)  # rows and columns of the planted square


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(store: Path, *extra: str, cwd: Path | None = None, command: list[str] = SERVE) -> Iterator[str]:
    """``zsad serve`` (``command``) in a subprocess; yields its base URL once /health answers."""
    port = free_port()
    process = subprocess.Popen([*command, "--store", str(store), "--port", str(port), *extra], cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"zsad serve exited {process.returncode}: {process.stdout.read()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("zsad serve did not become ready in 90 s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def texture(seed: int, defect: bool = False) -> np.ndarray:
    """Grey woven texture with noise; with ``defect``, a bright red square at rows/cols 30..60."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    weave = 25 * np.sin(2 * np.pi * xx / 8) * np.sin(2 * np.pi * yy / 8)
    image = np.clip(128 + weave[..., None] + rng.normal(0, 4, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    if defect:
        image[DEFECT[0] : DEFECT[1], DEFECT[0] : DEFECT[1]] = (230, 40, 40)
    return image


def png(image: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).convert(mode or "RGB").save(buffer, format="PNG" if mode != "CMYK" else "JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four normal references, a normal test image and one with a planted defect, as PNG files."""
    folder = tmp_path_factory.mktemp("serve-images")
    files = {f"ref{i}": texture(10 + i) for i in range(4)} | {"normal": texture(20), "defect": texture(21, True)}
    paths = {}
    for name, image in files.items():
        paths[name] = folder / f"{name}.png"
        paths[name].write_bytes(png(image))
    return paths
