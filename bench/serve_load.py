#!/usr/bin/env python3
"""A bounded load test of `sumtune serve`: the real command on 127.0.0.1, a burst of valid
requests (half beam search, half greedy, every run each) and malformed ones at once.

    PYTHONPATH=src python bench/serve_load.py RUN [RUN ...] [--valid 20] [--malformed 20]
        [--timeout 120] [--max-queue 32] [--beam cnndm] [--greedy greedy] [--articles CSV] [--json]

Reports, for the valid requests: answered (200), refused at once (503, each with its Retry-After),
timed out (504), their latencies (median, p90) per decoding; that every malformed one got a 4xx;
and, once every response is in, /health: the server up, nothing queued and nothing decoding.
Exit status 1 when a check fails: a 504, a 503 without Retry-After, a malformed request not
refused with a 4xx, work left running, or the server down.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ARTICLES = Path(__file__).resolve().parents[1] / "src" / "sumtune" / "demo" / "cnndm" / "test.csv"
MALFORMED = [b"{", b"\xff\xfe", b'{"text": ""}', b'{"text": "a", "runs": ["nope"]}', b"[]",
             b'{"text": "a", "decoding": {"num_beams": 0}}', b"x" * 300_000, b'{"text": null}', b"null",
             b'{"text": "a", "decoding": {"max_new_tokens": 100000}}']


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs: list[str], timeout: float, max_queue: int, log: Path, ready_s: float = 600) -> tuple:
    """`sumtune serve RUNS` in a child process on 127.0.0.1; (process, URL) once /health answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "sumtune", "serve", *runs, "--host", "127.0.0.1", "--port", str(port),
           "--timeout", str(timeout), "--max-queue", str(max_queue)]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=os.environ.copy())
    url, end = f"http://127.0.0.1:{port}", time.monotonic() + ready_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"sumtune serve exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"sumtune serve did not answer /health within {ready_s:.0f} s")


def _quantiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    p90 = statistics.quantiles(values, n=10, method="inclusive")[8] if len(values) > 1 else values[0]
    return {"n": len(values), "median": round(statistics.median(values), 2), "p90": round(p90, 2),
            "max": round(max(values), 2)}


def burst(url: str, articles: list[str], valid: int, malformed: int, beam: str, greedy: str,
          client_timeout: float) -> dict:
    """Every request at once (a barrier releases the threads together); a report of what came back."""
    start = threading.Barrier(valid + malformed)
    results: list[dict] = []
    # one client, its pool wide enough for every request at once (making a client per request costs
    # more than a refusal)
    client = httpx.Client(timeout=client_timeout, limits=httpx.Limits(max_connections=valid + malformed))

    def post(i: int, body: bytes, kind: str) -> None:
        start.wait()
        t0 = time.perf_counter()
        try:
            r = client.post(url + "/summarize", content=body, headers={"Content-Type": "application/json"})
            status, retry = r.status_code, r.headers.get("Retry-After")
        except httpx.HTTPError as e:
            status, retry = f"client error: {type(e).__name__}", None
        results.append({"kind": kind, "status": status, "seconds": time.perf_counter() - t0, "retry_after": retry})

    threads = []
    for i in range(valid):
        preset = beam if i % 2 == 0 else greedy
        body = json.dumps({"text": articles[i % len(articles)], "decoding": {"preset": preset}}).encode()
        threads.append(threading.Thread(target=post, args=(i, body, preset)))
    for i in range(malformed):
        threads.append(threading.Thread(target=post, args=(i, MALFORMED[i % len(MALFORMED)], "malformed")))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    client.close()
    report: dict = {"wall_s": round(wall, 1), "valid": {}, "malformed": {}}
    for kind in (beam, greedy):
        mine = [r for r in results if r["kind"] == kind]
        report["valid"][kind] = {
            "sent": len(mine),
            "answered": sum(r["status"] == 200 for r in mine),
            "refused_503": sum(r["status"] == 503 for r in mine),
            "refused_503_with_retry_after": sum(r["status"] == 503 and (r["retry_after"] or "").isdigit() for r in mine),
            "timed_out_504": sum(r["status"] == 504 for r in mine),
            "other": sorted({str(r["status"]) for r in mine} - {"200", "503", "504"}),
            "latency_answered_s": _quantiles([r["seconds"] for r in mine if r["status"] == 200]),
            "latency_503_s": _quantiles([r["seconds"] for r in mine if r["status"] == 503]),
            "retry_after_s": sorted({int(r["retry_after"]) for r in mine if (r["retry_after"] or "").isdigit()}),
        }
    bad = [r for r in results if r["kind"] == "malformed"]
    report["malformed"] = {"sent": len(bad), "refused_4xx": sum(isinstance(r["status"], int) and 400 <= r["status"] < 500
                                                                 for r in bad),
                           "latency_s": _quantiles([r["seconds"] for r in bad])}
    answered = [r["seconds"] for r in results if r["kind"] != "malformed" and r["status"] == 200]
    report["latency_answered_s"] = _quantiles(answered)
    return report


def settle(url: str, seconds: float = 10.0) -> dict:
    """/health once nothing is queued or decoding (or after `seconds`): nothing may be left running."""
    end = time.monotonic() + seconds
    while True:
        health = httpx.get(url + "/health", timeout=5).json()
        if (health["queued"] == 0 and health["decoding"] == 0) or time.monotonic() > end:
            return health
        time.sleep(0.2)


def failures(report: dict) -> list[str]:
    out = []
    for kind, v in report["valid"].items():
        if v["timed_out_504"]:
            out.append(f"{kind}: {v['timed_out_504']} requests timed out (504)")
        if v["refused_503"] != v["refused_503_with_retry_after"]:
            out.append(f"{kind}: a 503 without Retry-After")
        if v["other"]:
            out.append(f"{kind}: unexpected answers {v['other']}")
    if report["malformed"]["refused_4xx"] != report["malformed"]["sent"]:
        out.append("a malformed request was not refused with a 4xx")
    health = report["health_after"]
    if health.get("status") != "ok" or not health.get("worker_alive"):
        out.append(f"server not healthy afterwards: {health}")
    if health.get("queued") or health.get("decoding"):
        out.append(f"work left running afterwards: {health}")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--valid", type=int, default=20)
    ap.add_argument("--malformed", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--max-queue", type=int, default=32)
    ap.add_argument("--beam", default="cnndm", help="decoding preset of the beam-search half")
    ap.add_argument("--greedy", default="greedy", help="decoding preset of the greedy half")
    ap.add_argument("--articles", default=str(ARTICLES), help="a CSV with an 'article' column")
    ap.add_argument("--json", action="store_true", help="print the report as JSON only")
    a = ap.parse_args(argv)
    with open(a.articles, newline="", encoding="utf-8") as f:
        articles = [row["article"] for row in csv.DictReader(f)]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "serve.log"
        proc, url = start_server(a.runs, a.timeout, a.max_queue, log)
        try:
            report = burst(url, articles, a.valid, a.malformed, a.beam, a.greedy, a.timeout + 60)
            report["health_after"] = settle(url)
            report["server_log_tail"] = log.read_text()[-1500:]
        finally:
            proc.terminate()
            proc.wait(30)
    report["failures"] = failures(report)
    print(json.dumps(report) if a.json else json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    sys.exit(1 if main()["failures"] else 0)
