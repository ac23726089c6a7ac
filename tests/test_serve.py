"""`sumtune serve`: the API on four tiny runs (summaries equal `summarize`'s, every error code),
admission by projected wait (503 + Retry-After at once), cancellation on a timeout or a client
gone (decoding stops, the next request starts at once), greedy and beam rows in separate batches
taking turns, refusal of runs on different base models, a loopback load test against a real
uvicorn, and the page in a headless Chromium."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import torch
from method_utils import make_run
from starlette.testclient import TestClient

from sumtune.cli import main
from sumtune.errors import UserError
from sumtune.multirun import RunSet
from sumtune.recipes.evaluate import check_text, summarize_text
from sumtune.serve import Limits, Service, create_app, run_paths
from sumtune.serve_queue import Cost, Job, Refused, Scheduler
from sumtune.tiny import synthetic_news

METHODS = ("zero_shot", "prompt_tuning", "lora", "last_layers")
# fp32: a row's summary then does not depend on the rows it shares a batch with (see multirun)
SETS = ("train.precision=fp32", "method.prompt_tuning.n_tokens=4", "method.lora.r=4")
FAST = {"max_new_tokens": 12}
TEXTS = [r["article"] for r in synthetic_news(3, seed=7)]


@pytest.fixture(scope="module")
def runs(tiny_neo, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("serve_runs")
    return [make_run(root / m, tiny_neo, m, sets=SETS, steps=3)[0] for m in METHODS]


@pytest.fixture(scope="module")
def runset(runs) -> RunSet:
    return RunSet(runs)


@pytest.fixture(scope="module")
def client(runset):
    with TestClient(create_app(Service(runset, Limits(max_body=20_000)))) as c:
        yield c


def _post(client, payload, **kw):
    return client.post("/summarize", content=json.dumps(payload).encode(), **kw)


def test_health_runs_and_every_summary_equals_summarize(client, runs):
    assert client.get("/health").json()["status"] == "ok"
    listed = client.get("/runs").json()["runs"]
    assert [r["method"] for r in listed] == list(METHODS)
    assert all(r["trained"] and r["report"] is None for r in listed)
    for decoding in (FAST, {"preset": "cnndm", "max_new_tokens": 16, "min_new_tokens": 4, "max_sentences": 2}):
        for text in TEXTS[:2]:
            r = _post(client, {"text": text, "decoding": decoding})
            assert r.status_code == 200, r.text
            got = r.json()["summaries"]
            assert [s["run"] for s in got] == [p.name for p in runs]
            for s, run in zip(got, runs):
                assert s["summary"] == summarize_text(run, text, decoding), (run.name, decoding)
                assert s["seconds"] > 0
    one = _post(client, {"text": TEXTS[0], "runs": ["lora", "lora"], "decoding": FAST}).json()["summaries"]
    assert [s["run"] for s in one] == ["lora"]


@pytest.mark.parametrize("body,status,words", [
    (b"x" * 20_001, 413, "over"),
    (b'{"text": "caf\xe9"}', 400, "not UTF-8"),
    (b"{not json", 400, "JSON"),
    (b"", 400, "JSON"),
    (b'["a list"]', 400, "object"),
    (b'{"text": "\\ud800 lone"}', 400, "surrogate"),
    (b'{"text": "   \\n "}', 422, "empty input text"),
    (b'{"text": 5}', 422, "string"),
    (b'{"text": "a", "extra": 1}', 422, "unknown field"),
    (b'{"text": "a", "runs": []}', 422, "non-empty list"),
    (b'{"text": "a", "runs": ["nope"]}', 404, "unknown run"),
    (b'{"text": "a", "decoding": {"batch_size": 4}}', 422, "not allowed"),
    (b'{"text": "a", "decoding": {"num_beams": 100}}', 422, "num_beams"),
    (b'{"text": "a", "decoding": {"max_new_tokens": true}}', 422, "max_new_tokens"),
    (b'{"text": "a", "decoding": {"length_penalty": NaN}}', 422, "length_penalty"),
    (b'{"text": "a", "decoding": {"preset": "wild"}}', 422, "preset"),
    (b'{"text": "a", "decoding": {"min_new_tokens": 50, "max_new_tokens": 10}}', 422, "min_new_tokens"),
])
def test_bad_requests_get_clear_errors(client, body, status, words):
    r = client.post("/summarize", content=body)
    assert r.status_code == status and words in r.json()["error"], r.text


def test_other_routes_and_no_file_reading(client):
    assert client.get("/reports/0").status_code == 404
    assert client.get("/reports/../../etc/passwd").status_code == 404
    assert client.get("/summarize").status_code == 405
    assert "<textarea" in client.get("/").text


def test_health_shows_each_kind_measured(client):
    assert _post(client, {"text": TEXTS[2], "runs": ["zero_shot"], "decoding": FAST}).status_code == 200
    health = client.get("/health").json()
    assert health["queued"] == 0 and health["decoding"] == 0
    kind = next(k for k in health["kinds"] if k["decoding"] == "greedy, 12 tokens")
    assert kind["batches_measured"] >= 1
    assert kind["seconds_per_summary_alone"] >= kind["seconds_per_summary_in_a_full_batch"] > 0


class _Gated:
    """A RunSet whose decoding waits for a gate, recording each batch's rows (run, num_beams)."""

    def __init__(self, runset):
        self.inner, self.gate, self.batches = runset, threading.Event(), []

    def decode(self, rows, *a, **kw):
        self.batches.append([(r.run.name, r.cfg.eval.num_beams) for r in rows])
        self.gate.wait(10)
        return self.inner.decode(rows, *a, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _until(condition, seconds: float = 5.0) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.01)


def _one_decoding_one_queued(c, pool, gated, body) -> tuple:
    """Two requests: the first taken by the worker, which waits at the gate, the second queued behind it."""
    first = pool.submit(_post, c, body)
    _until(lambda: gated.batches)
    second = pool.submit(_post, c, body)
    _until(lambda: c.get("/health").json()["queued"] == 1)
    return first, second


def test_projected_wait_past_the_timeout_is_refused_at_once_with_retry_after(runset):
    gated = _Gated(runset)
    # 1.5 s per summary before measuring (1 s x the prior scale 1.5); one summary per batch; a 3 s
    # timeout: one request may wait
    service = Service(gated, Limits(max_rows=1, timeout=3.0), cost=Cost(1.0, 0.0, 0.0))
    body = {"text": TEXTS[0], "runs": ["zero_shot"], "decoding": FAST}
    with TestClient(create_app(service)) as c, ThreadPoolExecutor(4) as pool:
        first, second = _one_decoding_one_queued(c, pool, gated, body)
        t0 = time.perf_counter()
        third = _post(c, body)  # would end 1.5 s after the second: past its timeout
        assert third.status_code == 503 and time.perf_counter() - t0 < 0.5, third.text
        retry = third.headers["Retry-After"]
        assert retry.isdigit() and int(retry) >= 1 and third.json()["retry_after"] == int(retry)
        assert "timeout" in third.json()["error"] and third.text.count("\n") == 0
        alone = _post(c, {"text": TEXTS[0], "decoding": {"num_beams": 2, "max_new_tokens": 12}})  # 4 x 1.5 s
        assert alone.status_code == 503 and "alone" in alone.json()["error"], alone.text
        gated.gate.set()
        assert first.result().status_code == 200 and second.result().status_code == 200  # accepted: answered


def test_full_queue_is_refused_with_retry_after(runset):
    gated = _Gated(runset)
    service = Service(gated, Limits(max_queue=1, timeout=60), cost=Cost(0.01, 0.0, 0.0))
    body = {"text": TEXTS[0], "runs": ["zero_shot"], "decoding": FAST}
    with TestClient(create_app(service)) as c, ThreadPoolExecutor(4) as pool:
        first, second = _one_decoding_one_queued(c, pool, gated, body)
        full = _post(c, body)
        assert full.status_code == 503 and "waiting" in full.json()["error"] and full.headers["Retry-After"].isdigit()
        gated.gate.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert c.get("/health").json()["worker_alive"]


def test_admission_keeps_accepted_requests_in_time_and_the_worker_follows_the_replay():
    """The Scheduler alone (a row here is its cost; x 1.5 before a kind is measured): kinds take
    turns, one batch each."""
    sched = Scheduler(max_rows=1, max_queue=10, cost=lambda row, n: row * n)
    now = time.monotonic()
    a1, a2 = Job([1.0], ["A"], now + 10), Job([1.0], ["A"], now + 3.5)
    sched.admit(a1)  # ends at 1.5 s
    sched.admit(a2)  # ends at 3 s
    with pytest.raises(Refused) as refused:
        sched.admit(Job([1.0], ["B"], now + 10))  # in time itself, but B's turn would end a2 at 4.5 s
    assert refused.value.retry_after == 5
    with pytest.raises(Refused, match="alone"):
        sched.admit(Job([5.0], ["C"], now + 2))
    b = Job([0.25], ["B"], now + 10)
    sched.admit(b)  # a2 now ends at 3.375 s
    gone = Job([0.5], ["B"], now + 10)
    sched.admit(gone)
    sched.cancel(gone)
    projected = sched.replay(now)
    assert sorted(projected, key=projected.get) == [a1, b, a2]
    assert projected[a2] == pytest.approx(now + 3.375)
    done = []
    while sched.turns:
        kind, batch = sched.take()
        assert all(j is not gone for j, _ in batch)
        sched.finish(kind, batch, [([1], 0.1)] * len(batch), 0.1)
        done += [j for j, _ in batch if j.future.done()]
    assert done == [a1, b, a2] and gone.future.cancelled()


def test_a_measured_kind_is_projected_from_its_batches():
    """The scale of a kind follows measured / cost: the first batch taken as it is, then a moving
    average plus twice its mean deviation; a batch with a cancelled row is not measured."""
    sched = Scheduler(max_rows=4, max_queue=10, cost=lambda row, n: row * n)
    one = [(Job([2.0], ["A"], time.monotonic() + 60), 0)]
    assert sched.seconds("A", one) == 3.0  # 2 s x 1.5 before measuring
    for seconds in (1.0, 1.0):  # half the cost, twice
        sched.admit(one[0][0])
        kind, batch = sched.take()
        sched.finish(kind, batch, [([1], seconds)], seconds)
        one = [(Job([2.0], ["A"], time.monotonic() + 60), 0)]
    scale = sched.scales["A"]
    assert scale.batches == 2 and scale.mean == 0.5 and scale.dev == pytest.approx(0.125 * 0.75)
    assert sched.seconds("A", one) == pytest.approx(2.0 * (0.5 + 2 * 0.125 * 0.75))
    job = Job([2.0], ["A"], time.monotonic() + 60)
    sched.admit(job)
    kind, batch = sched.take()
    sched.cancel(job)
    sched.finish(kind, batch, [([1], 9.0)], 9.0)
    assert scale.batches == 2 and job.future.cancelled()


def test_a_burst_shares_one_batch():
    """The worker starts a batch once requests stop arriving: rows admitted meanwhile join it."""
    sched = Scheduler(max_rows=4, max_queue=10, cost=lambda row, n: row * n)
    sched.GATHER_S, sched.MAX_GATHER_S = 0.3, 5.0  # wide, so a slow test machine cannot split the burst
    jobs = [Job([0.1], ["A"], time.monotonic() + 60) for _ in range(3)]
    with ThreadPoolExecutor(1) as pool:
        sched.admit(jobs[0])
        taken = pool.submit(sched.take)
        for job in jobs[1:]:
            time.sleep(0.05)
            sched.admit(job)
        t0 = time.monotonic()
        _kind, batch = taken.result()
    assert [j for j, _ in batch] == jobs and time.monotonic() - t0 < 1.0


def test_greedy_and_beam_rows_never_share_a_batch_and_take_turns(runset, runs):
    gated = _Gated(runset)
    service = Service(gated, Limits(max_rows=2, timeout=60), cost=Cost(0.01, 0.0, 0.0))
    beam, two = {"num_beams": 3, "max_new_tokens": 12}, ["zero_shot", "lora"]
    with TestClient(create_app(service)) as c, ThreadPoolExecutor(6) as pool:
        first = pool.submit(_post, c, {"text": TEXTS[0], "runs": ["zero_shot"], "decoding": beam})
        _until(lambda: gated.batches)
        posted = []
        for decoding in (beam, beam, beam, FAST, FAST):  # in this order: three beam requests, then two greedy
            posted.append((decoding, pool.submit(_post, c, {"text": TEXTS[1], "runs": two, "decoding": decoding})))
            waiting = len(posted)
            _until(lambda n=waiting: c.get("/health").json()["queued"] == n)
        gated.gate.set()
        assert first.result().status_code == 200
        answers = [(d, f.result()) for d, f in posted]
    assert [sorted({b for _, b in batch}) for batch in gated.batches] == [[3], [3], [1], [3], [1], [3]]
    paths = {p.name: p for p in runs}
    for decoding, r in answers:
        assert r.status_code == 200, r.text
        for s in r.json()["summaries"]:
            assert s["summary"] == summarize_text(paths[s["run"]], TEXTS[1], decoding)


@contextmanager
def _slow_steps(runset, seconds: float):
    """Every forward of the runset's model sleeps `seconds` first; yields [forwards so far]."""
    count = [0]

    def hook(module, args):
        count[0] += 1
        time.sleep(seconds)

    handle = runset.base.get_input_embeddings().register_forward_pre_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


LONG = {"text": TEXTS[0], "runs": ["zero_shot", "lora"], "decoding": {"max_new_tokens": 256, "min_new_tokens": 256}}


def _stops_and_frees(forwards: list[int], get, post) -> None:
    """After a cancellation: the worker is idle, no forward runs, the next request starts at once."""
    _until(lambda: get("/health").json()["decoding"] == 0, 2.0)
    n = forwards[0]
    time.sleep(0.3)
    assert forwards[0] == n and n < 128, n  # stopped long before its 256 steps, and nothing runs on
    t0 = time.perf_counter()
    r = post({"text": TEXTS[1], "runs": ["zero_shot"], "decoding": FAST})
    assert r.status_code == 200 and time.perf_counter() - t0 < 1.5, (r.text, time.perf_counter() - t0)
    health = get("/health").json()
    assert health["queued"] == 0 and health["decoding"] == 0


@pytest.mark.parametrize("num_beams", [1, 3])
def test_a_timed_out_request_stops_decoding_and_frees_the_worker(runset, num_beams):
    service = Service(runset, Limits(timeout=1.0), cost=Cost(0.01, 0.0, 0.0))  # admitted: projected far below 1 s
    long = {**LONG, "decoding": {**LONG["decoding"], "num_beams": num_beams}}
    with _slow_steps(runset, 0.02) as forwards, TestClient(create_app(service)) as c:
        t0 = time.perf_counter()
        r = _post(c, long)  # 256 steps x 20 ms: it cannot finish in 1 s
        assert r.status_code == 504 and time.perf_counter() - t0 < 2.0, r.text
        _stops_and_frees(forwards, c.get, lambda body: _post(c, body))


def test_a_client_that_goes_away_is_cancelled(runset):
    service = Service(runset, Limits(timeout=60), cost=Cost(0.01, 0.0, 0.0))
    with _slow_steps(runset, 0.02) as forwards, _uvicorn(create_app(service)) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/summarize", json=LONG, timeout=0.5)  # the client gives up and closes
        _stops_and_frees(forwards, lambda path: httpx.get(url + path, timeout=5),
                         lambda body: httpx.post(url + "/summarize", json=body, timeout=30))


def _other_base(tiny_neo: Path, out: Path) -> Path:
    """tiny_neo with one weight changed."""
    from transformers import AutoModelForCausalLM

    shutil.copytree(tiny_neo, out)
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        model.transformer.ln_f.weight[0] += 1.0
    model.save_pretrained(out)
    return out


def test_runs_on_different_base_models_are_refused_before_loading(tiny_neo, runs, tmp_path, monkeypatch, capsys):
    other = make_run(tmp_path / "other", _other_base(tiny_neo, tmp_path / "model2"), "zero_shot", sets=SETS)[0]

    def no_load(*a, **kw):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("sumtune.multirun.load_model", no_load)
    with pytest.raises(UserError, match="base model"):
        RunSet([runs[0], other])
    capsys.readouterr()
    assert main(["serve", str(runs[2]), str(other), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "one base model" in err, err


def test_run_paths_skip_what_is_not_a_run(runs, tmp_path, capsys):
    (tmp_path / "compare.md").write_text("table")
    (tmp_path / "tiny-model").mkdir()
    assert run_paths([str(runs[0]), str(tmp_path / "compare.md"), str(tmp_path / "tiny-model")]) == [runs[0]]
    assert capsys.readouterr().out.count("note: skipping") == 2
    with pytest.raises(UserError, match="no run directories"):
        run_paths([str(tmp_path / "compare.md")])


def test_check_text_is_the_summarize_check():
    assert check_text("Café (CNN)".encode(), "x") == "Café (CNN)"
    with pytest.raises(UserError, match="x is not UTF-8 text"):
        check_text(b"\xff", "x")
    with pytest.raises(UserError, match="empty input text"):
        check_text(b" \n", "x")


# --- a real server on the loopback -----------------------------------------------------------


@contextmanager
def _uvicorn(app):
    """uvicorn serving `app` on 127.0.0.1, an ephemeral port; yields its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    _until(lambda: server.started, 10.0)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def live(runset, runs):
    """A live server; a report.html beside the runs."""
    (runs[0].parent / "report.html").write_text("<html><body>report</body></html>")
    with _uvicorn(create_app(Service(runset, Limits(max_queue=64)))) as url:
        yield url


def _rss_mb() -> float:
    """This process's resident memory (Linux /proc; 0 elsewhere, which skips the bound)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0.0
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024


MALFORMED = [b"{", b"\xff\xfe", b'{"text": ""}', b'{"text": "a", "runs": ["x"]}', b"[]",
             b'{"text": "a", "decoding": {"num_beams": 0}}', b"x" * 300_000, b'{"text": null}', b"null",
             b'{"text": "a", "decoding": []}']


def test_load_50_concurrent_and_20_malformed_requests(live):
    import random

    rng = random.Random(0)
    with httpx.Client(timeout=60) as warm:  # one request first: lazily built parts are not growth
        assert warm.post(live + "/summarize", json={"text": TEXTS[0], "decoding": FAST}).status_code == 200
    before = _rss_mb()

    def good(i):
        runs = rng.sample(METHODS, rng.randint(1, 4))
        with httpx.Client(timeout=60) as c:
            return c.post(live + "/summarize", json={"text": TEXTS[i % 3], "runs": runs, "decoding": FAST})

    def bad(i):
        with httpx.Client(timeout=60) as c:
            return c.post(live + "/summarize", content=MALFORMED[i % len(MALFORMED)])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=16) as pool:
        goods = [pool.submit(good, i) for i in range(50)]
        bads = [pool.submit(bad, i) for i in range(20)]
        good_codes = [f.result().status_code for f in goods]
        bad_codes = [f.result().status_code for f in bads]
    elapsed = time.perf_counter() - t0
    assert good_codes == [200] * 50
    assert all(400 <= c < 500 for c in bad_codes), bad_codes
    assert httpx.get(live + "/health", timeout=5).json()["status"] == "ok"
    growth = _rss_mb() - before
    print(f"70 requests in {elapsed:.1f} s, RSS growth {growth:.1f} MiB")
    assert growth < 200, f"RSS grew by {growth:.0f} MiB"


def _chromium() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.browser
def test_page_in_headless_chromium_shows_one_summary_per_run(live, tmp_path, runs):
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium)")
    url = f"{live}/?submit=1&text={quote(TEXTS[0])}"
    flags = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert dom.count('class="card"') == len(METHODS), dom[-2000:]
    for run in runs:
        assert f'data-run="{run.name}"' in dom
    assert 'href="/reports/0"' in dom  # the report.html beside the runs
    shot = tmp_path / "serve_page.png"
    subprocess.run([*flags, "--window-size=1200,900", f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
