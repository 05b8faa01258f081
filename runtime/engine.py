"""One generation at a time for a server: a worker thread owns the model; requests wait in a
bounded first-come-first-served queue.

The executor runs batch 1 (one K/V cache), so requests are served one after another in arrival
order, which is fair: nobody is overtaken. The queue is bounded: a request that finds it full is
refused at once (the HTTP layer answers 429) instead of waiting without limit. A request whose
client went away is cancelled: skipped if still queued, stopped between two tokens if running,
so the GPU is free for the next one right away. Consecutive requests that share a prefix (a chat
that goes on) reuse its K/V (``Model.generate(reuse_cache=True)``).

Results flow back to the asyncio side as events on the request's ``asyncio.Queue``:
``("text", str)`` pieces, then one ``("done", Finished)`` or ``("error", str)``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from runtime.api import Model
from runtime.sampling import SamplingParams
from runtime.stops import IncrementalDecoder, StopStrings

log = logging.getLogger("qwen3vk.serve")


class QueueFull(Exception):
    """The waiting line is at its limit."""


@dataclass
class Finished:
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    text: str


@dataclass
class Job:
    request_id: str
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    stop_strings: list[str]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    log_prompt: str | None = None

    def emit(self, kind: str, value) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class Engine:
    def __init__(self, model: Model, max_waiting: int = 16) -> None:
        self.model, self.max_waiting = model, max_waiting
        self.stops = model.default_stop_ids()
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self.waiting = 0
        self.running = False
        self.counts = {"served": 0, "cancelled": 0, "rejected": 0, "failed": 0}
        self._thread = threading.Thread(target=self._work, name="engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self.waiting >= self.max_waiting:
                self.counts["rejected"] += 1
                raise QueueFull(f"the server is busy: {self.waiting} requests are waiting already; retry later")
            self.waiting += 1
        self._jobs.put(job)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self.waiting -= 1
                self.running = True
            try:
                if job.cancel.is_set():
                    self.counts["cancelled"] += 1
                    job.emit("done", Finished("cancelled", len(job.prompt_ids), 0, 0, ""))
                    continue
                self._run(job)
            except Exception as e:  # noqa: BLE001 - one failed request must not stop the server
                self.counts["failed"] += 1
                log.exception("request %s failed", job.request_id)
                job.emit("error", f"generation failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            finally:
                with self._lock:
                    self.running = False

    def _run(self, job: Job) -> None:
        started = time.perf_counter()
        model = self.model
        detok = IncrementalDecoder(model.tokenizer, self.stops)
        matcher = StopStrings(job.stop_strings)
        sent = 0  # characters of detok.text already emitted
        finish, text, n = "length", None, 0
        gen = model.generate(job.prompt_ids, job.max_new_tokens, job.sampling, self.stops, reuse_cache=True,
                             should_stop=job.cancel.is_set)
        try:
            for tok in gen:
                n += 1
                new_from = len(detok.text)
                detok.push(tok)
                full = detok.text
                hit = matcher.find(full, new_from) if matcher.stops else None
                if hit:  # OpenAI's rule: the output ends before the stop string
                    finish, text = "stop", full[:hit[0]]
                    break
                end = len(full) - matcher.holdback(full) if matcher.stops else len(full)
                if end > sent:
                    job.emit("text", full[sent:end])
                    sent = end
        finally:
            gen.close()
        st = model.last_stats
        if text is None:
            detok.flush()
            text = detok.text
            finish = st.finish_reason
        if len(text) > sent:
            job.emit("text", text[sent:])
        self.counts["cancelled" if finish == "cancelled" else "served"] += 1
        job.emit("done", Finished(finish, len(job.prompt_ids), n, st.cached_tokens, text))
        log.info("%s: %d prompt tokens (%d from cache), %d new, finish=%s, waited %.2fs, ran %.2fs%s",
                 job.request_id, len(job.prompt_ids), st.cached_tokens, n, finish, started - job.submitted,
                 time.perf_counter() - started, f", prompt={job.log_prompt!r}" if job.log_prompt is not None else "")
