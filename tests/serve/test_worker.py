"""The model worker's scheduling: a large request cannot starve a small one, preparation runs beside
inspections, model calls take turns in arrival order, and every request gets its own results in order."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from zsad.serve.worker import ModelWorker, TurnLock


class Recorder:
    """Stands in for a prepared inspector: returns each image's source, remembers every call's sources."""

    def __init__(self, seconds: float = 0.01, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.seconds, self.fail_on = seconds, fail_on

    def inspect(self, images, sources):
        self.calls.append(list(sources))
        time.sleep(self.seconds)
        if self.fail_on in sources:
            raise RuntimeError(f"cannot inspect {self.fail_on}")
        return list(sources)


def _images(prefix: str, count: int) -> tuple[list[np.ndarray], list[str]]:
    return [np.zeros((2, 2, 3), np.uint8)] * count, [f"{prefix}{i}" for i in range(count)]


def test_a_small_request_is_served_within_two_batches_of_a_large_one():
    recorder = Recorder()
    worker = ModelWorker(lambda key: recorder, batch_size=4, max_wait=0.05)
    try:
        large = worker.submit("p", *_images("a", 40))
        time.sleep(0.02)  # the large request is already running
        small = worker.submit("p", *_images("b", 1))
        assert small.result(timeout=10) == ["b0"]
        assert large.result(timeout=10) == [f"a{i}" for i in range(40)]
        batch = next(i for i, call in enumerate(recorder.calls) if "b0" in call)
        assert batch <= 2 and all(len(call) <= 4 for call in recorder.calls)
        assert sum(len(call) for call in recorder.calls) == 41
    finally:
        worker.close()


def test_preparation_runs_beside_inspections_and_failures_reach_their_requests():
    recorder = Recorder(fail_on="bad0")
    worker = ModelWorker(lambda key: recorder, batch_size=4, max_wait=0.0)
    try:
        started = threading.Event()
        calibration = worker.call(lambda: (started.set(), time.sleep(0.5), "calibrated")[2])
        started.wait(5)
        inspection = worker.submit("p", *_images("x", 2))
        assert inspection.result(timeout=0.4) == ["x0", "x1"]  # before the calibration is over
        assert calibration.result(timeout=5) == "calibrated"
        failed = worker.submit("q", *_images("bad", 1))
        with pytest.raises(RuntimeError, match="cannot inspect bad0"):
            failed.result(timeout=5)
        assert worker.submit("p", *_images("y", 1)).result(timeout=5) == ["y0"]  # still serving
    finally:
        worker.close()


def test_turns_are_granted_in_arrival_order():
    lock, order = TurnLock(), []
    holding, waiting = threading.Event(), threading.Event()

    def first() -> None:
        with lock:
            holding.set()
            waiting.wait(5)
            time.sleep(0.05)  # the other thread is queued by now
        with lock:  # asks again at once: must queue behind the other
            order.append("first again")

    def second() -> None:
        holding.wait(5)
        waiting.set()
        with lock:
            order.append("second")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert order == ["second", "first again"]
