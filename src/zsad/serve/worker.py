"""Model work off the request path, fair between requests: requests queue work and wait on futures.

Inspections run on the model thread in bounded units: each batch holds at most ``batch_size`` images, taken
round-robin from every request waiting (an equal share each, the first request of the next batch rotating),
so a 500-image request advances one share per batch beside a 1-image request instead of ahead of it.
When the thread is idle it waits up to ``max_wait`` for more requests to batch with the first. Each batch
runs each product revision's images in one model call; each revision's prepared inspector is kept (least
recently used first out), so switching between products does not rebuild reference memories.

Preparing and calibrating products (:meth:`ModelWorker.call`) runs on a second thread, one call at a time
(so two revisions of a product never race), beside the inspections instead of in front of them. The two
threads share the model's weights, so every model call of either holds :class:`TurnLock` (granted in arrival
order, through :class:`SharedModel`): a calibration of many calls lets inspections in between its calls.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zsad.inference.inspection import Inspection
from zsad.inference.scoring import Inspector


@dataclass
class Job:
    key: Hashable  # the product revision whose prepared inspector runs it
    images: list[np.ndarray]
    sources: list[str]  # the images' names, as the inspections carry them
    future: Future = field(default_factory=Future)
    done: list[Inspection | None] = field(default_factory=list)
    next: int = 0  # the first image not yet taken into a batch

    def __post_init__(self) -> None:
        self.done = [None] * len(self.images)

    @property
    def waiting(self) -> int:
        return len(self.images) - self.next


class TurnLock:
    """A lock granted in the order it was asked for, so a thread that releases and asks again at once (a
    calibration's next model call) queues behind a thread already waiting (an inspection)."""

    def __init__(self) -> None:
        self._turns = threading.Condition()
        self._issued = self._serving = 0

    def __enter__(self) -> None:
        with self._turns:
            ticket = self._issued
            self._issued += 1
            while ticket != self._serving:
                self._turns.wait()

    def __exit__(self, *exc: object) -> None:
        with self._turns:
            self._serving += 1
            self._turns.notify_all()


class SharedModel:
    """A :class:`~zsad.inference.scoring.Model` whose every call holds ``lock``: several scorers sharing
    one set of weights (one per product) used from the worker's two threads."""

    def __init__(self, model: Any, lock: TurnLock) -> None:
        self.model, self.lock = model, lock

    def __getattr__(self, name: str) -> Any:  # few_shot, zero_shot, composes, ...
        return getattr(self.model, name)

    def prepare(self, *args: Any) -> None:
        with self.lock:
            self.model.prepare(*args)

    def run(self, pieces: list[np.ndarray]) -> Any:
        with self.lock:
            return self.model.run(pieces)

    def prepare_parts(self, *args: Any) -> list:
        with self.lock:
            return self.model.prepare_parts(*args)

    def prepare_from_parts(self, *args: Any) -> None:
        with self.lock:
            self.model.prepare_from_parts(*args)


class ModelWorker:
    """Runs model work on its own threads; ``inspector_for(key)`` builds a prepared inspector for a product."""

    def __init__(self, inspector_for: Callable[[Hashable], Inspector], batch_size: int = 8, max_wait: float = 0.005,
                 cached_products: int = 16) -> None:
        self.inspector_for = inspector_for
        self.batch_size, self.max_wait, self.cached_products = batch_size, max_wait, cached_products
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._calls: queue.Queue[tuple[Callable[[], Any], Future] | None] = queue.Queue()
        self._inspectors: OrderedDict[Hashable, Inspector] = OrderedDict()
        self._lock = threading.Lock()
        self.calls = 0  # model calls made, for tests and benchmarks
        self._threads = [threading.Thread(target=self._inspect_loop, name="zsad-model", daemon=True),
                         threading.Thread(target=self._call_loop, name="zsad-prepare", daemon=True)]
        for thread in self._threads:
            thread.start()

    def submit(self, key: Hashable, images: list[np.ndarray], sources: list[str]) -> Future:
        job = Job(key, images, sources)
        if not images:
            job.future.set_result([])
        else:
            self._jobs.put(job)
        return job.future

    def call(self, fn: Callable[[], Any]) -> Future:
        future: Future = Future()
        self._calls.put((fn, future))
        return future

    def remember(self, key: Hashable, inspector: Inspector) -> None:
        """Keep an already prepared inspector for ``key``."""
        with self._lock:
            self._inspectors[key] = inspector
            self._inspectors.move_to_end(key)
            while len(self._inspectors) > self.cached_products:
                self._inspectors.popitem(last=False)

    def close(self) -> None:
        self._jobs.put(None)
        self._calls.put(None)
        for thread in self._threads:
            thread.join(timeout=30)

    def _inspector(self, key: Hashable) -> Inspector:
        with self._lock:
            known = self._inspectors.get(key)
            if known is not None:
                self._inspectors.move_to_end(key)
                return known
        inspector = self.inspector_for(key)
        self.remember(key, inspector)
        return inspector

    # --- the model thread ---------------------------------------------------------------------------
    def _inspect_loop(self) -> None:
        active: deque[Job] = deque()
        while True:
            try:
                if not active:  # idle: wait for a request, then a moment for others to batch with it
                    first = self._jobs.get()
                    if first is None:
                        return
                    active.append(first)
                    self._gather(active, time.monotonic() + self.max_wait)
                else:
                    self._gather(active, 0.0)
            except _Stop:
                return
            self._run(self._take(active))
            for _ in range(len(active)):  # finished requests leave; the others wait for the next batch
                job = active.popleft()
                if not job.future.done():
                    active.append(job)

    def _gather(self, active: deque[Job], deadline: float) -> None:
        """Move queued requests into ``active`` (waiting until ``deadline`` while fewer than a batch wait)."""
        while True:
            timeout = deadline - time.monotonic()
            try:
                job = self._jobs.get(timeout=timeout) if timeout > 0 and sum(
                    j.waiting for j in active) < self.batch_size else self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is None:
                raise _Stop
            active.append(job)

    def _take(self, active: deque[Job]) -> list[tuple[Job, int]]:
        """At most ``batch_size`` images, an equal share from each waiting request (what a request leaves
        unused goes to the others), starting with the request after the last batch's first."""
        batch: list[tuple[Job, int]] = []
        waiting = [job for job in active if job.waiting]
        while waiting and len(batch) < self.batch_size:
            share = max(1, (self.batch_size - len(batch)) // len(waiting))
            for job in waiting:
                count = min(share, job.waiting, self.batch_size - len(batch))
                batch += [(job, job.next + i) for i in range(count)]
                job.next += count
            waiting = [job for job in waiting if job.waiting]
        active.rotate(-1)
        return batch

    def _run(self, batch: list[tuple[Job, int]]) -> None:
        by_key: dict[Hashable, list[tuple[Job, int]]] = {}
        for job, index in batch:
            by_key.setdefault(job.key, []).append((job, index))
        for key, units in by_key.items():
            try:
                results = self._inspector(key).inspect([job.images[i] for job, i in units],
                                                       [job.sources[i] for job, i in units])
                self.calls += 1
            except BaseException as err:  # every request in the call learns what happened
                for job in {id(job): job for job, _ in units}.values():
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            for (job, index), result in zip(units, results):
                job.done[index] = result
                if job.next == len(job.images) and all(r is not None for r in job.done) and not job.future.done():
                    job.future.set_result(job.done)

    # --- the preparation thread ---------------------------------------------------------------------
    def _call_loop(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            fn, future = item
            try:
                future.set_result(fn())
            except BaseException as err:
                future.set_exception(err)


class _Stop(Exception):
    """The worker was closed."""
