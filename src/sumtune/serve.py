"""`sumtune serve RUN [RUN ...]`: a small web page and JSON API showing every run's summary of
an article side by side (Starlette + uvicorn).

Endpoints: `GET /` the page; `POST /summarize {"text", "runs"?, "decoding"?}` -> `{"summaries":
[{"run", "summary", "seconds"}]}`; `GET /runs`; `GET /health`; `GET /reports/{id}` the
report.html files found beside the runs at startup (nothing else is read from disk, nothing
named by a client).

One worker thread owns the model (multirun.RunSet); the queue in front of it (serve_queue) admits
a request only if its projected wait lets it finish within the timeout, batches rows only with
rows of the same decoding, and cancels a request that times out or whose client goes away (its
rows stop decoding at the next step). `seconds` is the wall time of the batch a summary was
decoded in. Limits, each a clear HTTP error: body size (413), non-UTF-8 body or bad JSON (400),
bad fields or empty text (422), unknown run (404), a full queue or a projected wait past the
timeout (503 with Retry-After, at once), a slow answer (504, should a batch overrun its estimate).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sumtune.config import DECODING_PRESETS
from sumtune.data import encode_prompt
from sumtune.decoding.summaries import NotUTF8Error, article_text, check_text, summary_text
from sumtune.errors import UserError
from sumtune.multirun import Row, RunSet
from sumtune.runs import with_overrides
from sumtune.serve_queue import Cost, Refused, Worker

log = logging.getLogger(__name__)

# the decoding keys a client may set, with their bounds (a public demo must bound the work per request)
DECODING_LIMITS: dict[str, tuple[type, float, float]] = {
    "num_beams": (int, 1, 8), "max_new_tokens": (int, 1, 256), "min_new_tokens": (int, 0, 256),
    "no_repeat_ngram_size": (int, 0, 8), "length_penalty": (float, 0.0, 4.0), "max_sentences": (int, 0, 20),
}


@dataclass
class Limits:
    max_body: int = 256 * 1024  # bytes of a request body
    max_queue: int = 32  # requests waiting for the worker
    timeout: float = 120.0  # seconds for one request, queue included
    max_rows: int = 16  # summaries decoded together at most


class HTTPError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


def check_decoding(decoding: Any) -> dict[str, Any]:
    """The client's decoding overrides: whitelisted keys, right types, within bounds (else 422)."""
    if decoding is None:
        return {}
    if not isinstance(decoding, dict):
        raise HTTPError(422, "'decoding' must be an object")
    out: dict[str, Any] = {}
    for key, value in decoding.items():
        if key == "preset":
            if value not in DECODING_PRESETS:
                raise HTTPError(422, f"decoding.preset: expected one of {', '.join(DECODING_PRESETS)}")
            out[key] = value
            continue
        if key not in DECODING_LIMITS:
            raise HTTPError(422, f"decoding.{key}: not allowed (allowed: preset, {', '.join(DECODING_LIMITS)})")
        kind, low, high = DECODING_LIMITS[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (kind is int and not isinstance(value, int)) or not math.isfinite(value) \
                or not low <= value <= high:
            raise HTTPError(422, f"decoding.{key}: expected {kind.__name__} in [{low}, {high}], got {value!r}")
        out[key] = kind(value)
    return out


def find_reports(runs: list[Path]) -> list[Path]:
    """report.html files inside the runs or beside them (their parent directory), found once."""
    seen: list[Path] = []
    for run in runs:
        for path in (run / "report.html", run.parent / "report.html"):
            if path.is_file() and path.resolve() not in seen:
                seen.append(path.resolve())
    return seen


class Service:
    """The request handling, independent of the web framework (so the checks are plain code)."""

    def __init__(self, runset, limits: Limits | None = None, mode: str = "mixed",
                 cost: Cost | None = None):
        """`cost`: decoding seconds on this machine (default: serve_queue.calibrate on the runset now)."""
        self.runset, self.limits = runset, limits or Limits()
        lim = self.limits
        self.worker = Worker(runset, lim.max_rows, lim.max_queue, lim.timeout, mode, cost)
        self.reports = find_reports([r.path for r in runset.runs.values()])

    def runs(self) -> list[dict]:
        out = []
        for info, run in zip(self.runset.describe(), self.runset.runs.values()):
            report = next((i for i, p in enumerate(self.reports) if p.parent in (run.path.resolve(),
                                                                              run.path.resolve().parent)), None)
            out.append({**info, "report": None if report is None else f"/reports/{report}"})
        return out

    def parse(self, body: bytes) -> tuple[str, list[str], dict]:
        """(text, run names, decoding) of a request body, or HTTPError."""
        if len(body) > self.limits.max_body:
            raise HTTPError(413, f"request body over {self.limits.max_body} bytes")
        try:
            payload = json.loads(check_text(body, "request body"))
        except NotUTF8Error as e:
            raise HTTPError(400, str(e)) from None
        except (UserError, ValueError):
            raise HTTPError(400, 'expected a JSON object {"text": ..., "runs": [...], "decoding": {...}}') from None
        if not isinstance(payload, dict):
            raise HTTPError(400, "expected a JSON object")
        unknown = set(payload) - {"text", "runs", "decoding"}
        if unknown:
            raise HTTPError(422, f"unknown field {sorted(unknown)[0]!r} (fields: text, runs, decoding)")
        return self._text(payload.get("text")), self._runs(payload.get("runs")), check_decoding(payload.get("decoding"))

    @staticmethod
    def _text(text: Any) -> str:
        if not isinstance(text, str):
            raise HTTPError(422, "'text' must be a string: the article")
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:
            raise HTTPError(400, "'text' is not valid Unicode (lone surrogate escapes)") from None
        try:
            return check_text(raw, "field 'text'")
        except UserError as e:
            raise HTTPError(422, str(e)) from None

    def _runs(self, runs: Any) -> list[str]:
        if runs is None:
            return list(self.runset.runs)
        if not isinstance(runs, list) or not runs or not all(isinstance(r, str) for r in runs):
            raise HTTPError(422, "'runs' must be a non-empty list of run names (see GET /runs)")
        for r in runs:
            if r not in self.runset.runs:
                raise HTTPError(404, f"unknown run {r[:80]!r}; loaded: {', '.join(self.runset.runs)}")
        return list(dict.fromkeys(runs))

    def rows(self, text: str, names: list[str], decoding: dict) -> list:
        """One row per run: the run's configuration with the request's decoding, its prompt."""
        rows = []
        for name in names:
            run = self.runset.runs[name]
            try:
                cfg = with_overrides(copy.deepcopy(run.cfg), decoding)
            except UserError as e:
                raise HTTPError(422, str(e)) from None
            prompt = encode_prompt(self.runset.tokenizer, article_text(text, cfg), cfg.data)
            rows.append(Row(run, cfg, prompt))
        return rows

    async def summarize(self, body: bytes, gone: Callable[[], Awaitable[None]] | None = None) -> dict:
        """The summaries of a request body. `gone`: returns when the client has gone away; the
        request is then cancelled (ClientGone), as it is on the timeout (504)."""
        text, names, decoding = self.parse(body)
        rows = self.rows(text, names, decoding)
        try:
            job = self.worker.submit(rows)
        except Refused as e:
            raise HTTPError(503, f"{e}; retry in {e.retry_after} s", e.retry_after) from None
        answer = asyncio.wrap_future(job.future)
        watch = asyncio.ensure_future(gone()) if gone is not None else None
        try:
            await asyncio.wait([answer, *([watch] if watch else [])], return_when=asyncio.FIRST_COMPLETED,
                               timeout=max(0.0, job.deadline - time.monotonic()))
        finally:  # on the timeout, the client gone, or this handler cancelled: stop the job's decoding
            if watch is not None:
                watch.cancel()
            if not answer.done():
                self.worker.cancel(job)
        future = job.future  # answered, or cancelled above
        if future.cancelled():
            if watch is not None and watch.done() and not watch.cancelled():
                raise ClientGone
            raise HTTPError(504, f"no summary within {self.limits.timeout:g} s; retry later")
        if future.exception() is not None:
            raise HTTPError(500, f"decoding failed: {str(future.exception()).splitlines()[0][:200]}")
        tok = self.runset.tokenizer
        return {"summaries": [{"run": row.run.name, "summary": summary_text(tok, tokens, row.cfg),
                               "seconds": round(seconds, 4)} for row, (tokens, seconds) in zip(rows, future.result())]}


class ClientGone(Exception):
    """The client went away before its answer (nobody reads a response)."""


def create_app(service: Service):
    """The Starlette application around a Service."""
    # late: starlette is the optional [serve] extra, needed only to serve
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse
    from starlette.routing import Route

    page = resources.files("sumtune").joinpath("serve_page.html").read_text(encoding="utf-8")

    async def index(request: Request):
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self' 'unsafe-inline'"})

    async def runs(request: Request):
        return JSONResponse({"runs": service.runs()})

    async def health(request: Request):
        return JSONResponse({"status": "ok", "runs": len(service.runset.runs),
                             "worker_alive": service.worker.thread.is_alive(), **service.worker.scheduler.snapshot()})

    async def report(request: Request):
        i = request.path_params["i"]
        if not 0 <= i < len(service.reports):
            return JSONResponse({"error": "no such report"}, status_code=404)
        return FileResponse(service.reports[i], media_type="text/html")

    async def gone(request: Request) -> None:
        """Returns once the client has disconnected (the body is read: what comes next is that)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def summarize(request: Request):
        try:
            body = await _read_body(request, service.limits.max_body)
            return JSONResponse(await service.summarize(body, lambda: gone(request)))
        except HTTPError as e:
            retry = {} if e.retry_after is None else {"retry_after": e.retry_after}
            return JSONResponse({"error": str(e), **retry}, status_code=e.status,
                                headers={"Retry-After": str(e.retry_after)} if retry else None)
        except (ClientDisconnect, ClientGone):
            return JSONResponse({"error": "client disconnected"}, status_code=499)

    return Starlette(routes=[
        Route("/", index), Route("/runs", runs), Route("/health", health),
        Route("/reports/{i:int}", report), Route("/summarize", summarize, methods=["POST"]),
    ])


async def _read_body(request, limit: int) -> bytes:
    """The body, read no further than `limit` bytes (a declared or streamed excess: 413)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"request body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def run_paths(paths: list[str]) -> list[Path]:
    """The run directories among `paths` (so `sumtune serve demo_runs/*` works): a path without
    config.yaml (compare.md, the tiny model, plots) is skipped with a note."""
    runs = []
    for p in map(Path, paths):
        if p.is_dir() and (p / "config.yaml").is_file():
            runs.append(p)
        else:
            print(f"note: skipping {p} (not a run directory)")
    if not runs:
        raise UserError("no run directories among the paths given; pass the --output-dir of train runs")
    return runs


def serve(paths: list[str], host: str = "127.0.0.1", port: int = 8000, base_model: str | None = None,
          limits: Limits | None = None) -> None:
    """Load the runs (directories: see `run_paths`) onto one base model and serve until interrupted."""
    import uvicorn  # late: the optional [serve] extra, needed only to serve

    runset = RunSet(paths, base_model=base_model)
    app = create_app(Service(runset, limits))
    print(f"serving {len(runset.runs)} run{'s' if len(runset.runs) > 1 else ''} ({', '.join(runset.runs)}) on http://{host}:{port}/")
    uvicorn.run(app, host=host, port=port, log_level="warning", limit_concurrency=256)
