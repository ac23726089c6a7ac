"""The queue in front of `sumtune serve`'s one decoding thread: admission by projected wait, one
queue per decoding kind served in turn, and cancellation.

Why: on a CPU a beam-search summary of a 135M model takes tens of seconds, so a queue that takes
every request answers late (504), keeps decoding for clients that have gone, and makes a greedy
request wait for the beam search it shares a batch with. Here:

- Kinds. A row's kind is how it decodes (`RunSet.decoding_key`: beams, lengths, penalties,
  precision, stop tokens). Each kind has its own FIFO of rows; a batch takes up to `max_rows`
  rows of one kind; kinds take turns, one batch each, so a greedy request waits behind at most
  one batch of each other kind, never inside one. A batch starts once requests stop arriving
  (50 ms apart, 0.5 s at most), so a burst shares batches.
- Estimates. A batch's seconds are projected as cost(rows) x the kind's scale. The cost comes
  from a calibration at start-up (`Cost`: a prefill per row, then max_new_tokens steps, each a
  fixed part plus a part per sequence: on a CPU a step of 16 rows costs far less than 16 steps of
  one), so it is the worst case: every summary runs to max_new_tokens. The scale starts at 1.5
  (what the calibration does not see: beam bookkeeping, noise); each measured batch gives
  measured / cost, kept as an exponential moving average plus twice its mean deviation (as TCP
  sizes its retransmission timeout), so a noisy kind is projected long. A batch cut short by a
  cancellation is not measured.
- Admission. A request is admitted only if a replay of the queue (the turns and batches the
  worker will take, each batch its projected seconds) finishes it before its deadline and
  keeps every admitted request that was in time in time; otherwise it is refused at once (503)
  with the seconds after which enough of the queue ahead will have drained (Retry-After).
- Cancellation. A request that times out or whose client goes away is cancelled: its queued rows
  leave the queue, its rows in the running batch leave at the next decoding step, and a batch
  whose rows are all cancelled ends (`Generator.generate(cancelled=...)`).
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field, replace

from sumtune.data import encode_prompt
from sumtune.multirun import Row

log = logging.getLogger(__name__)

Kind = Hashable
Entry = tuple["Job", int]  # a request and the index of one of its rows


class Refused(Exception):
    """A request not admitted: the message, and the whole seconds after which to retry."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


@dataclass(eq=False)
class Job:
    """One request: its rows (multirun.Row), each row's kind, its deadline (time.monotonic())."""

    rows: list
    kinds: list[Kind]
    deadline: float
    future: Future = field(default_factory=Future)  # the rows' (tokens, seconds), in order
    cancelled: bool = False

    def __post_init__(self):
        self.results: list = [None] * len(self.rows)
        self.left = len(self.rows)


class Scale:
    """Measured seconds / projected cost of one kind's batches (see the module doc)."""

    PRIOR = 1.5  # before a kind is measured
    ALPHA, BETA = 0.25, 0.25  # the weights of a new measurement in the mean and in the deviation

    def __init__(self, ratio: float):
        self.mean, self.dev, self.batches = ratio, ratio / 4, 1

    def update(self, ratio: float) -> None:
        self.dev += self.BETA * (abs(ratio - self.mean) - self.dev)
        self.mean += self.ALPHA * (ratio - self.mean)
        self.batches += 1

    @property
    def value(self) -> float:
        return self.mean + 2 * self.dev


class Scheduler:
    """The queues, the estimates and the running batch, behind one lock: `admit` and `cancel` from
    request handlers, `take`, `finish` and `fail` from the worker."""

    GATHER_S, MAX_GATHER_S = 0.05, 0.5  # see `_gather`

    def __init__(self, max_rows: int, max_queue: int, cost: Callable[[object, int], float],
                 label: Callable[[object], str] = str):
        """`cost(row, n)`: the projected seconds of a batch of n rows of `row`'s kind, before scaling;
        `label(row)`: its kind in words (for /health)."""
        self.max_rows, self.max_queue, self.cost, self.label = max_rows, max_queue, cost, label
        self.cond = threading.Condition()
        self.queues: dict[Kind, deque[Entry]] = {}
        self.turns: list[Kind] = []  # kinds with rows queued, in the order they will be served
        self.scales: dict[Kind, Scale] = {}
        self.labels: dict[Kind, str] = {}
        self.examples: dict[Kind, object] = {}  # a row of each kind seen (for /health)
        self.running: tuple[float, float, list[Entry]] | None = None  # (start, expected seconds, batch)
        self.arrived = 0.0  # time.monotonic() of the last request admitted

    def seconds(self, kind: Kind, batch: list[Entry]) -> float:
        """The projected seconds of a batch."""
        scale = self.scales.get(kind)
        job, i = batch[0]
        return self.cost(job.rows[i], len(batch)) * (scale.value if scale is not None else Scale.PRIOR)

    # --- request handlers ------------------------------------------------------

    def admit(self, job: Job) -> None:
        """Queue the job's rows, or raise Refused (see the module doc)."""
        with self.cond:
            now = time.monotonic()
            waiting = {j for q in self.queues.values() for j, _ in q}
            if len(waiting) >= self.max_queue:
                raise Refused(f"server busy: {len(waiting)} requests waiting", self._remaining(now))
            before, after = self.replay(now), self.replay(now, job)
            late = [j for j, t in after.items() if t > j.deadline and (j is job or before[j] <= j.deadline)]
            if late:
                wait = max(after[j] - j.deadline if j is job else after[j] - now for j in late)
                alone = sum(self.seconds(k, batch) for k, batch in _batches(job, self.max_rows))
                if alone > job.deadline - now:
                    raise Refused(f"this request alone is projected to take {alone:.0f} s, over the timeout of "
                                  f"{job.deadline - now:.0f} s; ask for fewer runs, beams or max_new_tokens", wait)
                raise Refused(f"server busy: this request would be answered in {after[job] - now:.0f} s "
                              f"(timeout {job.deadline - now:.0f} s) or delay requests already accepted", wait)
            for i, (row, kind) in enumerate(zip(job.rows, job.kinds)):
                if kind not in self.queues:
                    self.queues[kind] = deque()
                    self.turns.append(kind)
                    self.labels[kind], self.examples[kind] = self.label(row), row
                self.queues[kind].append((job, i))
            self.arrived = now
            self.cond.notify()

    def cancel(self, job: Job) -> None:
        """The job is no longer wanted: its queued rows leave; its running rows stop at the next step."""
        with self.cond:
            job.cancelled = True
            job.future.cancel()
            self._drop(job)

    def _drop(self, job: Job) -> None:
        for kind in set(job.kinds):
            queue = self.queues.get(kind)
            if queue is None:
                continue
            kept = deque(e for e in queue if e[0] is not job)
            if kept:
                self.queues[kind] = kept
            else:
                del self.queues[kind]
                self.turns.remove(kind)

    def replay(self, now: float, extra: Job | None = None) -> dict[Job, float]:
        """When each queued job (and `extra`) would be done: the worker's turns replayed with the
        estimates (`take` does the same)."""
        t = now + self._remaining(now)
        queues = {k: list(q) for k, q in self.queues.items()}
        turns = list(self.turns)
        for i, kind in enumerate(extra.kinds if extra is not None else []):
            if kind not in queues:
                queues[kind] = []
                turns.append(kind)
            queues[kind].append((extra, i))
        done: dict[Job, float] = {}
        while turns:
            kind = turns.pop(0)
            batch, queues[kind] = queues[kind][: self.max_rows], queues[kind][self.max_rows :]
            t += self.seconds(kind, batch)
            done.update((j, t) for j, _ in batch)
            if queues[kind]:
                turns.append(kind)
        return done

    def _remaining(self, now: float) -> float:
        """Expected seconds left of the running batch (none when idle or overrun)."""
        if self.running is None:
            return 0.0
        start, expected, _ = self.running
        return max(0.0, start + expected - now)

    # --- worker ----------------------------------------------------------------

    def take(self) -> tuple[Kind, list[Entry]]:
        """The next batch: up to max_rows rows of the kind whose turn it is (waits for one)."""
        with self.cond:
            self._gather()
            kind = self.turns.pop(0)
            queue = self.queues[kind]
            batch = [queue.popleft() for _ in range(min(self.max_rows, len(queue)))]
            if queue:
                self.turns.append(kind)
            else:
                del self.queues[kind]
            expected = self.seconds(kind, batch)
            self.running = (time.monotonic(), expected, batch)
            return kind, batch

    def _gather(self) -> None:
        """Wait for a row, then while requests keep arriving (GATHER_S apart at most, MAX_GATHER_S in
        all) until the next batch is full: a burst shares batches instead of its first request
        taking a batch alone. The replay sees the rows queued meanwhile as that one batch."""
        while True:
            while not self.turns:
                self.cond.wait()
            end = time.monotonic() + self.MAX_GATHER_S
            while self.turns and len(self.queues[self.turns[0]]) < self.max_rows:
                wait = min(self.arrived + self.GATHER_S, end) - time.monotonic()
                if wait <= 0:
                    return
                self.cond.wait(wait)
            if self.turns:  # else every queued request was cancelled meanwhile
                return

    def finish(self, kind: Kind, batch: list[Entry], results: list, seconds: float) -> None:
        """A batch decoded: measure it (unless cut short) and answer the jobs it completes."""
        with self.cond:
            self.running = None
            if not any(j.cancelled for j, _ in batch):
                job, i = batch[0]
                ratio = seconds / max(self.cost(job.rows[i], len(batch)), 1e-9)
                if kind in self.scales:
                    self.scales[kind].update(ratio)
                else:
                    self.scales[kind] = Scale(ratio)
            for (job, i), result in zip(batch, results):
                if job.cancelled:
                    continue
                job.results[i] = result
                job.left -= 1
                if job.left == 0:
                    _settle(job.future, result=job.results)

    def fail(self, batch: list[Entry], error: Exception) -> None:
        """A batch failed: its jobs get the error (their other rows leave the queue)."""
        with self.cond:
            self.running = None
            for job in dict.fromkeys(j for j, _ in batch):
                if not job.cancelled:
                    job.cancelled = True
                    self._drop(job)
                    _settle(job.future, error=error)

    def snapshot(self) -> dict:
        """For /health: requests waiting, rows in the running batch, and each kind seen: its rows queued,
        its projected seconds per summary alone and in a full batch, the batches measured."""
        with self.cond:
            kinds = []
            for kind, row in self.examples.items():
                scale = self.scales.get(kind)
                value = scale.value if scale is not None else Scale.PRIOR
                kinds.append({"decoding": self.labels[kind], "queued_rows": len(self.queues.get(kind, ())),
                              "seconds_per_summary_alone": round(self.cost(row, 1) * value, 3),
                              "seconds_per_summary_in_a_full_batch":
                                  round(self.cost(row, self.max_rows) * value / self.max_rows, 3),
                              "batches_measured": scale.batches if scale is not None else 0})
            return {"queued": len({j for q in self.queues.values() for j, _ in q}),
                    "decoding": 0 if self.running is None else len(self.running[2]),  # cancelled too, until it ends
                    "kinds": kinds}


def _batches(job: Job, max_rows: int) -> list[tuple[Kind, list[Entry]]]:
    """The job's rows by kind, in batches of at most max_rows (the job alone in the queue)."""
    by_kind: dict[Kind, list[Entry]] = {}
    for i, kind in enumerate(job.kinds):
        by_kind.setdefault(kind, []).append((job, i))
    return [(k, rows[n : n + max_rows]) for k, rows in by_kind.items() for n in range(0, len(rows), max_rows)]


def _settle(future: Future, result=None, error: Exception | None = None) -> None:
    """Answer a future unless it was cancelled meanwhile (its waiter has gone)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


@dataclass(frozen=True)
class Cost:
    """Seconds of decoding on this machine (`calibrate`): a prefill per row, and per decoding step a
    fixed part plus a part per sequence (a beam-search row has num_beams sequences)."""

    prefill: float
    step: float
    per_sequence: float

    def __call__(self, row, n: int) -> float:
        """A batch of n rows like `row`, each running to max_new_tokens (the worst case)."""
        ev = row.cfg.eval
        return n * self.prefill + ev.max_new_tokens * (self.step + self.per_sequence * n * ev.num_beams)


class Worker:
    """The one thread that decodes: batches from the Scheduler, decoded by a multirun.RunSet."""

    def __init__(self, runset, max_rows: int, max_queue: int, timeout: float, mode: str = "mixed",
                 cost: Cost | None = None):
        """`cost`: decoding seconds on this machine (default: `calibrate`d on the runset now)."""
        self.runset, self.max_rows, self.timeout, self.mode = runset, max_rows, timeout, mode
        self.cost = cost if cost is not None else calibrate(runset)
        self.scheduler = Scheduler(max_rows, max_queue, self.cost, label=kind_label)
        self.thread = threading.Thread(target=self._loop, name="sumtune-serve-worker", daemon=True)
        self.thread.start()

    def submit(self, rows: list) -> Job:
        """Admit a request's rows (or raise Refused); its deadline is now + timeout."""
        job = Job(rows, [self.runset.decoding_key(r) for r in rows], time.monotonic() + self.timeout)
        self.scheduler.admit(job)
        return job

    def cancel(self, job: Job) -> None:
        self.scheduler.cancel(job)

    def _loop(self) -> None:
        while True:
            kind, batch = self.scheduler.take()
            rows, jobs = [job.rows[i] for job, i in batch], [job for job, _ in batch]
            t0 = time.perf_counter()
            try:
                results = self.runset.decode(rows, self.max_rows, mode=self.mode,
                                             cancelled=lambda n, jobs=jobs: jobs[n].cancelled)
            except Exception as e:  # answer every waiting request; the worker stays up
                log.exception("decoding failed")
                self.scheduler.fail(batch, e)
                continue
            self.scheduler.finish(kind, batch, results, time.perf_counter() - t0)


def kind_label(row) -> str:
    """A kind in words: "greedy, 96 tokens", "beam 4, 96 tokens"."""
    ev = row.cfg.eval
    return f"{'greedy' if ev.num_beams == 1 else f'beam {ev.num_beams}'}, {ev.max_new_tokens} tokens"


def calibrate(runset, rows: int = 4) -> Cost:
    """The Cost of decoding on this machine: greedy rows of the longest prompt the first run makes,
    timed for 1 and 9 tokens at batch 1 and for 9 tokens at batch `rows` (after one warm-up)."""
    run = next(iter(runset.runs.values()))
    prompt = encode_prompt(runset.tokenizer, "The council met on Tuesday to discuss the budget. " * 400, run.cfg.data)

    def seconds(steps: int, n: int = 1) -> float:
        cfg = copy.copy(run.cfg)
        cfg.eval = replace(cfg.eval, num_beams=1, max_new_tokens=steps, min_new_tokens=steps, no_repeat_ngram_size=0)
        t0 = time.perf_counter()
        runset.decode([Row(run, cfg, prompt)] * n, n)
        return time.perf_counter() - t0

    seconds(2)  # lazily built parts (kernels, stop tables) are not decoding time
    prefill = seconds(1)
    one = max(seconds(9) - prefill, 0.0) / 8  # a step of one row: step + per_sequence
    many = max(seconds(9, rows) - rows * prefill, 0.0) / 8  # a step of `rows` rows: step + rows x per_sequence
    per_sequence = max(many - one, 0.0) / (rows - 1)
    return Cost(prefill, max(one - per_sequence, 0.0), per_sequence)
