"""Day-two behaviour of a real server: retries that never duplicate, and a stop that a stalled client
cannot hold up."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx
import pytest

from conftest import SERVE, free_port, server


def _files(paths) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (p.name, p.read_bytes(), "image/png")) for p in paths]


@pytest.mark.slow
def test_a_retry_with_the_same_idempotency_key_records_nothing_new(images, tmp_path):
    with server(tmp_path / "store") as url:
        references = [("references", (f"r{i}.png", images[f"ref{i}"].read_bytes(), "image/png")) for i in range(4)]
        created = [httpx.post(f"{url}/products", data={"name": "bracket", "class_name": "bracket"}, files=references,
                              headers={"Idempotency-Key": "create-1"}, timeout=60) for _ in range(2)]
        assert [c.status_code for c in created] == [201, 201] and created[0].json() == created[1].json()
        assert created[1].headers["Idempotent-Replayed"] == "true"

        key = {"Idempotency-Key": "line-3/part-0815"}
        first = httpx.post(f"{url}/products/bracket/inspect", files=_files([images["defect"], images["normal"]]),
                           headers=key, timeout=60)
        retry = httpx.post(f"{url}/products/bracket/inspect", files=_files([images["defect"], images["normal"]]),
                           headers=key, timeout=60)
        assert first.status_code == retry.status_code == 200 and first.json() == retry.json()
        assert "Idempotent-Replayed" not in first.headers and retry.headers["Idempotent-Replayed"] == "true"
        assert httpx.get(f"{url}/inspections").headers["X-Total-Count"] == "2"
        other = httpx.post(f"{url}/products/bracket/inspect", files=_files([images["normal"]]), headers=key,
                           timeout=60)
        assert other.status_code == 422 and "was used for another request" in other.json()["error"]
        bad = httpx.post(f"{url}/products/bracket/inspect", files=_files([images["normal"]]),
                         headers={"Idempotency-Key": "spaces are not allowed"}, timeout=60)
        assert bad.status_code == 422
        failed = httpx.post(f"{url}/products/nothing/inspect", files=_files([images["normal"]]),
                            headers={"Idempotency-Key": "k-404"}, timeout=60)
        assert failed.status_code == 404  # a failed request frees its key: the retry runs again
        assert httpx.post(f"{url}/products/nothing/inspect", files=_files([images["normal"]]),
                          headers={"Idempotency-Key": "k-404"}, timeout=60).status_code == 404
        review = [httpx.post(f"{url}/inspections/{first.json()[1]['id']}/review", json={"verdict": "normal"},
                             headers={"Idempotency-Key": "review-1"}, timeout=60) for _ in range(2)]
        assert review[0].json() == review[1].json() and review[1].headers["Idempotent-Replayed"] == "true"


@pytest.mark.slow
def test_sigterm_stops_the_server_within_the_timeout_while_an_upload_stalls(tmp_path):
    port = free_port()
    process = subprocess.Popen([*SERVE, "--store", str(tmp_path / "store"), "--port", str(port),
                                "--shutdown-timeout", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stalled = None
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "the server did not start"
            time.sleep(0.2)
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b"POST /products/x/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                        b"boundary=b\r\nContent-Length: 1000000\r\n\r\n--b\r\nContent-Disposition: form-data; "
                        b'name="images"; filename="a.png"\r\n\r\n' + b"x" * 1000)  # ... and then nothing more
        time.sleep(0.5)
        start = time.monotonic()
        process.terminate()
        process.wait(timeout=15)
        assert time.monotonic() - start < 2 + 5
    finally:
        if stalled is not None:
            stalled.close()
        if process.poll() is None:
            process.kill()
            process.wait()
