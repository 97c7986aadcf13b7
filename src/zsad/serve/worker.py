"""One thread owns the model; requests queue work for it and wait on futures, never on the model.

Jobs that arrive together are batched: the worker takes the first job, then keeps collecting for up to
``max_wait`` seconds or until ``batch_size`` images are queued, and runs each product's images in one
model call (the scorer batches them ``batch_size`` at a time). Each product's prepared inspector is kept
(least recently used first out), so switching between products does not rebuild reference memories.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zsad.inference.scoring import Inspector


@dataclass
class Job:
    key: Hashable  # the product revision whose prepared inspector runs it
    images: list[np.ndarray]
    sources: list[str]  # the images' names, as the inspections carry them
    future: Future = field(default_factory=Future)


@dataclass
class Call:
    """Any other work that needs the model (preparing and calibrating a product)."""

    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)


class ModelWorker:
    """Runs model work on its own thread; ``inspector_for(key)`` builds a prepared inspector for a product."""

    def __init__(self, inspector_for: Callable[[Hashable], Inspector], batch_size: int = 8, max_wait: float = 0.005,
                 cached_products: int = 16) -> None:
        self.inspector_for = inspector_for
        self.batch_size, self.max_wait, self.cached_products = batch_size, max_wait, cached_products
        self._queue: queue.Queue[Job | Call | None] = queue.Queue()
        self._inspectors: OrderedDict[Hashable, Inspector] = OrderedDict()
        self._thread = threading.Thread(target=self._loop, name="zsad-model", daemon=True)
        self.calls = 0  # model calls made, for tests and benchmarks
        self._thread.start()

    def submit(self, key: Hashable, images: list[np.ndarray], sources: list[str]) -> Future:
        job = Job(key, images, sources)
        self._queue.put(job)
        return job.future

    def call(self, fn: Callable[[], Any]) -> Future:
        call = Call(fn)
        self._queue.put(call)
        return call.future

    def remember(self, key: Hashable, inspector: Inspector) -> None:
        """Keep an already prepared inspector (on the worker thread only, i.e. from inside :meth:`call`)."""
        self._inspectors[key] = inspector
        self._inspectors.move_to_end(key)
        while len(self._inspectors) > self.cached_products:
            self._inspectors.popitem(last=False)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _inspector(self, key: Hashable) -> Inspector:
        if key not in self._inspectors:
            self.remember(key, self.inspector_for(key))
        self._inspectors.move_to_end(key)
        return self._inspectors[key]

    def _collect(self, first: Job) -> tuple[list[Job], list[Call | None]]:
        jobs, others = [first], []
        deadline = time.monotonic() + self.max_wait
        queued = len(first.images)
        while queued < self.batch_size:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                break
            if isinstance(item, Job):
                jobs.append(item)
                queued += len(item.images)
            else:
                others.append(item)
                break
        return jobs, others

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            pending: list[Call | None] = []
            if isinstance(item, Job):
                jobs, pending = self._collect(item)
                self._run_jobs(jobs)
            else:
                pending = [item]
            for other in pending:
                if other is None:
                    return
                _settle(other.future, other.fn)

    def _run_jobs(self, jobs: list[Job]) -> None:
        by_key: dict[Hashable, list[Job]] = {}
        for job in jobs:
            by_key.setdefault(job.key, []).append(job)
        for key, group in by_key.items():
            try:
                inspector = self._inspector(key)
                results = inspector.inspect([image for job in group for image in job.images],
                                            [source for job in group for source in job.sources])
                self.calls += 1
            except BaseException as err:  # every waiting request learns what happened
                for job in group:
                    job.future.set_exception(err)
                continue
            start = 0
            for job in group:
                job.future.set_result(results[start : start + len(job.images)])
                start += len(job.images)


def _settle(future: Future, fn: Callable[[], Any]) -> None:
    try:
        future.set_result(fn())
    except BaseException as err:
        future.set_exception(err)
