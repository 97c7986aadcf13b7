"""The HTTP API against a real uvicorn server and a real SQLite file: products, inspections, history,
restarts, batching, bad input and tokens."""

from __future__ import annotations

import concurrent.futures
import io
import sqlite3
import subprocess

import httpx
import numpy as np
import pytest
from PIL import Image

import zsad
from conftest import DEFECT, SERVE, png, server, texture


def _files(field: str, paths) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (p.name, p.read_bytes(), "image/png")) for p in paths]


def _create(url: str, images, name: str = "bracket", **headers) -> httpx.Response:
    return httpx.post(f"{url}/products", data={"name": name, "class_name": "metal bracket"},
                      files=_files("references", [images[f"ref{i}"] for i in range(4)]), timeout=60, headers=headers)


@pytest.mark.slow
def test_products_inspections_history_survive_a_restart(images, tmp_path):
    store = tmp_path / "store"
    with server(store) as url:
        created = _create(url, images)
        assert created.status_code == 201, created.text
        product = created.json()
        assert product["references"] == 4 and product["thresholds"]["image"] is not None
        assert product["thresholds"]["image_source"] == \
            "leave-one-out scores of 4 normal image(s) at a 5% false-alarm rate"
        assert product["calibration"]["quality"] == "few images" and product["revision"] == 1
        response = httpx.post(f"{url}/products/bracket/inspect",
                              files=_files("images", [images["defect"], images["normal"]]), timeout=60)
        assert response.status_code == 200, response.text
        defect, normal = response.json()
        assert (defect["filename"], defect["decision"], normal["decision"]) == ("defect.png", "anomalous", "normal")
        assert defect["score"] > defect["thresholds"]["image"] > normal["score"]
        region = defect["regions"][0]  # the highest peak's region overlaps the planted square
        x, y, width, height = region["box"]
        assert x < DEFECT[1] and x + width > DEFECT[0] and y < DEFECT[1] and y + height > DEFECT[0]
        assert DEFECT[0] <= region["peak_at"][0] < DEFECT[1] and DEFECT[0] <= region["peak_at"][1] < DEFECT[1]
        assert 0 < region["area"] <= width * height and region["mean"] <= region["peak"]
        overlay = httpx.get(f"{url}{defect['overlay_url']}")
        assert overlay.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(overlay.content)).size[1] == 96
        history = httpx.get(f"{url}/inspections", params={"product": "bracket"}).json()
        assert [h["id"] for h in history] == [normal["id"], defect["id"]]
        assert [h["id"] for h in httpx.get(f"{url}/inspections", params={"decision": "anomalous"}).json()] == \
            [defect["id"]]
    rows = sqlite3.connect(store / "zsad.sqlite3").execute("SELECT filename, decision FROM inspections").fetchall()
    assert rows == [("defect.png", "anomalous"), ("normal.png", "normal")]

    with server(store) as url:  # restarted: records, files and thresholds are all still there
        history = httpx.get(f"{url}/inspections", params={"product": "bracket"}).json()
        assert [h["filename"] for h in history] == ["normal.png", "defect.png"]
        assert httpx.get(f"{url}{history[1]['overlay_url']}").status_code == 200
        again = httpx.post(f"{url}/products/bracket/inspect", files=_files("images", [images["defect"]]),
                           timeout=60).json()[0]  # state rebuilt from the stored references, no re-upload
        assert again["score"] == pytest.approx(defect["score"], abs=1e-6) and again["decision"] == "anomalous"
        assert httpx.get(f"{url}/products/bracket").json()["thresholds"] == product["thresholds"]


@pytest.mark.slow
def test_concurrent_requests_share_model_calls(images, tmp_path):
    with server(tmp_path / "store", "--max-wait-ms", "300") as url:
        assert _create(url, images).status_code == 201
        before = httpx.get(f"{url}/health").json()["model_calls"]

        def inspect(i: int) -> int:
            return httpx.post(f"{url}/products/bracket/inspect", files=_files("images", [images["normal"]]),
                              timeout=60).status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(inspect, range(8)))
        assert codes == [200] * 8
        calls = httpx.get(f"{url}/health").json()["model_calls"] - before
        assert calls < 8, calls
        assert len(httpx.get(f"{url}/inspections").json()) == 8


@pytest.mark.slow
def test_bad_input_is_a_4xx_json_error_and_the_service_keeps_serving(images, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    store = tmp_path / "store"
    truncated = images["normal"].read_bytes()[:200]
    wide = Image.fromarray((texture(30).astype(np.uint16)[..., 0] * 257)).convert("I;16")
    sixteen = io.BytesIO()
    wide.save(sixteen, format="PNG")
    with server(store, "--max-upload-mb", "0.05", "--max-pixels", "20000", cwd=cwd) as url:
        assert _create(url, images).status_code == 201

        def inspect(name: str, data: bytes, product: str = "bracket") -> httpx.Response:
            return httpx.post(f"{url}/products/{product}/inspect", files=[("images", (name, data, "image/png"))],
                              timeout=60)

        cases = {
            "empty.png": (inspect("empty.png", b""), 422, "empty.png is an empty file"),
            "truncated.png": (inspect("truncated.png", truncated), 422, "cannot read image truncated.png"),
            "notes.png": (inspect("notes.png", b"just some text\n"), 422, "notes.png: not a recognised image format"),
            "huge.png": (inspect("huge.png", b"\x89PNG" + bytes(60_000)), 413, "huge.png is over the upload limit"),
            "large.png": (inspect("large.png", png(np.zeros((150, 150, 3), np.uint8))), 413,
                          "large.png is 150x150 (0.0225 MP), over the limit of 0.02 MP"),
            "unknown product": (inspect("a.png", images["normal"].read_bytes(), "nope"), 404,
                                "no product named 'nope'"),
            "path name": (_create(url, images, name="../../etc"), 422, "product name '../../etc' is not allowed"),
            "duplicate": (_create(url, images), 409, "'bracket' exists already"),
            "one reference": (httpx.post(f"{url}/products", data={"name": "single", "class_name": "x"},
                                         files=_files("references", [images["ref0"]])), 422, "at least 2"),
            "no images": (httpx.post(f"{url}/products/bracket/inspect", timeout=60), 422, "images"),
        }
        for case, (response, status, message) in cases.items():
            assert response.status_code == status, (case, response.status_code, response.text)
            assert message in response.json()["error"], (case, response.json())
            assert "\n" not in response.json()["error"]
        for name, data in (("sixteen-bit.png", sixteen.getvalue()), ("rgba.png", png(texture(31), "RGBA")),
                           ("cmyk.jpg", png(texture(32), "CMYK"))):
            response = inspect(name, data)  # converted as everywhere in zsad (data/images.py), not refused
            assert response.status_code == 200 and response.json()[0]["filename"] == name, response.text
        assert httpx.get(f"{url}/health").status_code == 200
        assert inspect("normal.png", images["normal"].read_bytes()).status_code == 200
    assert list(cwd.iterdir()) == []  # nothing written outside --store
    assert {p.name for p in store.iterdir()} <= {"zsad.sqlite3", "zsad.sqlite3-wal", "zsad.sqlite3-shm",
                                                  "products", "inspections"}
    assert not (store / "products" / ".." / ".." / "etc").resolve().is_relative_to(store)


@pytest.mark.slow
def test_a_token_guards_every_route_but_the_page_health_and_sign_in(images, tmp_path):
    with server(tmp_path / "store", "--token", "s3cret") as url:
        assert httpx.get(f"{url}/health").json() == {"status": "ok", "version": zsad.__version__}  # nothing else
        assert httpx.get(url).status_code == 200
        denied = httpx.get(f"{url}/products")
        assert denied.status_code == 401 and "token" in denied.json()["error"]
        assert _create(url, images).status_code == 401
        assert httpx.get(f"{url}/products", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{url}/products", params={"token": "s3cret"}).status_code == 401  # never in a URL
        for path in ("/docs", "/openapi.json"):
            assert httpx.get(f"{url}{path}").status_code == 401
        bearer = {"Authorization": "Bearer s3cret"}
        schema = httpx.get(f"{url}/openapi.json", headers=bearer).json()
        assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        assert httpx.get(f"{url}/docs", headers=bearer).status_code == 200
        assert "model_calls" in httpx.get(f"{url}/health", headers=bearer).json()
        assert _create(url, images, Authorization="Bearer s3cret").status_code == 201

        assert httpx.post(f"{url}/session", json={"token": "wrong"}).status_code == 401
        with httpx.Client(base_url=url) as browser:  # the page's way: a session cookie, HttpOnly
            signed = browser.post("/session", json={"token": "s3cret"})
            assert signed.status_code == 204 and "httponly" in signed.headers["set-cookie"].lower()
            assert browser.get("/products").status_code == 200
            assert browser.get("/docs").status_code == 200
            assert browser.delete("/session").status_code == 204
            assert browser.get("/products").status_code == 401


@pytest.mark.slow
def test_cross_origin_writes_and_rebound_hosts_are_refused_without_a_token(images, tmp_path):
    """A page on another origin cannot drive a token-less loopback service through the operator's browser."""
    with server(tmp_path / "store") as url:
        port = url.rsplit(":", 1)[1]
        evil = {"Origin": "http://evil.example"}
        refused = httpx.post(f"{url}/products", data={"name": "x", "class_name": "y"}, headers=evil)
        assert refused.status_code == 403 and "another origin" in refused.json()["error"]
        assert httpx.post(f"{url}/session", json={"token": ""}, headers={"Sec-Fetch-Site": "cross-site"}
                          ).status_code == 403
        rebound = httpx.get(f"{url}/products", headers={"Host": f"evil.example:{port}"})
        assert rebound.status_code == 403 and "loopback only" in rebound.json()["error"]
        same = {"Origin": url}  # the service's own page
        assert _create(url, images, **same).status_code == 201
        assert httpx.get(f"{url}/products", headers={"Host": f"localhost:{port}"}).status_code == 200
        assert httpx.get(f"{url}/products").json()[0]["name"] == "bracket"


def test_binding_beyond_loopback_without_a_token_refuses_to_start(tmp_path):
    result = subprocess.run([*SERVE, "--host", "0.0.0.0", "--store", str(tmp_path / "store")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "zsad serve: error: --host 0.0.0.0 is reachable from other machines: give --token T so that only holders of "
        "the token can use the service"]
    assert not (tmp_path / "store").exists()
