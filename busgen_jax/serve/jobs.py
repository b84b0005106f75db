"""A queue of generation jobs with one worker thread: one generation at a time on the device.

The page polls a job's status (state, queue position, progress) and cancels it. A queued job
that is cancelled never runs; a running one stops before its next image (an image in progress
finishes: the sampler is one compiled loop). Finished jobs are kept, newest last, up to `keep`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import secrets
import threading
from collections.abc import Callable
from typing import Any

from absl import logging

QUEUED, RUNNING, DONE, CANCELLED, FAILED = "queued", "running", "done", "cancelled", "failed"


class QueueFull(RuntimeError):
    """Too many jobs waiting; the client should try again later."""


@dataclasses.dataclass
class Job:
    id: str
    request: Any
    num_images: int
    evals_per_image: int
    state: str = QUEUED
    evals: int = 0
    images: list[tuple[bytes, dict]] = dataclasses.field(default_factory=list)
    error: str | None = None
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)

    def tick(self) -> None:
        """One network evaluation done (called from the sampler)."""
        self.evals += 1


class JobQueue:
    """Runs `process(job)` for each submitted job in order, on one worker thread.

    `process` fills `job.images` and checks `job.cancelled` between images; an exception in it
    fails that job only (its message is shown on the page) and the worker goes on.
    """

    def __init__(
        self,
        process: Callable[[Job], None],
        *,
        max_queued: int,
        keep: int,
        warm_up: Callable[[], None] | None = None,
    ):
        self._process, self._warm_up = process, warm_up
        self._max_queued, self._keep = max_queued, keep
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._waiting: collections.deque[Job] = collections.deque()
        self._wake = threading.Condition()
        self._closed = False
        self._ready = warm_up is None
        self._counter = itertools.count(1)
        # A per-server token in job ids keeps a page from addressing another server's jobs.
        self._token = secrets.token_hex(4)
        self._thread = threading.Thread(target=self._work, name="busgen-serve-worker", daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        """False while the default setting is still compiling."""
        return self._ready

    def submit(self, request: Any, num_images: int, evals_per_image: int) -> Job:
        with self._wake:
            if len(self._waiting) >= self._max_queued:
                raise QueueFull(f"{len(self._waiting)} requests are waiting; try again shortly")
            job = Job(f"{self._token}-{next(self._counter)}", request, num_images, evals_per_image)
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._forget_old()
            self._wake.notify()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._wake:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        with self._wake:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            job.cancelled.set()
            if job.state == QUEUED:
                self._waiting.remove(job)
                job.state = CANCELLED
        return job

    def status(self, job: Job) -> dict[str, Any]:
        """The job as the page shows it; position 1 means next in line."""
        with self._wake:
            position = self._waiting.index(job) + 1 if job.state == QUEUED else 0
            if job.state == QUEUED and not self._ready:
                position += 1  # the warm-up runs first
        return {
            "id": job.id,
            "state": job.state,
            "position": position,
            "progress": min(job.evals / (job.num_images * job.evals_per_image), 1.0),
            "images": len(job.images),
            "error": job.error,
        }

    def close(self, timeout: float = 60.0) -> None:
        """Stops the worker after its current image."""
        with self._wake:
            self._closed = True
            for job in self._waiting:
                job.cancelled.set()
                job.state = CANCELLED
            self._waiting.clear()
            self._wake.notify()
        self._thread.join(timeout)

    def _forget_old(self) -> None:
        finished = [j.id for j in self._jobs.values() if j.state in (DONE, CANCELLED, FAILED)]
        for job_id in finished[: max(len(finished) - self._keep, 0)]:
            del self._jobs[job_id]

    def _work(self) -> None:
        if self._warm_up is not None:
            self._run_safely(self._warm_up, "warm-up")
            self._ready = True
        while True:
            with self._wake:
                while not self._waiting and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                job = self._waiting.popleft()
                job.state = RUNNING
            error = self._run_safely(functools.partial(self._process, job), f"job {job.id}")
            with self._wake:
                job.error = error
                complete = len(job.images) == job.num_images
                job.state = FAILED if error else DONE if complete else CANCELLED

    @staticmethod
    def _run_safely(fn: Callable[[], None], what: str) -> str | None:
        try:
            fn()
        except Exception as e:  # a failed job must not stop the worker
            logging.exception("%s failed", what)
            return f"generation failed: {type(e).__name__}: {e}"
        return None
