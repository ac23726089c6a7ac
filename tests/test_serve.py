"""`sumtune serve`: the API on four tiny runs (summaries equal `summarize`'s, every error code),
refusal of runs on different base models, a loopback load test against a real uvicorn, and
the page in a headless Chromium."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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


class _Gated:
    """A RunSet whose decoding waits for a gate: the queue fills and requests time out."""

    def __init__(self, runset):
        self.inner, self.gate = runset, threading.Event()
        self.runs, self.tokenizer = runset.runs, runset.tokenizer

    def decode(self, rows, *a, **kw):
        self.gate.wait(10)
        return self.inner.decode(rows, *a, **kw)

    def describe(self):
        return self.inner.describe()


def test_full_queue_503_and_timeout_504(runset):
    gated = _Gated(runset)
    service = Service(gated, Limits(max_queue=1, timeout=0.5))
    with TestClient(create_app(service)) as c, ThreadPoolExecutor(4) as pool:
        body = {"text": TEXTS[0], "runs": ["zero_shot"], "decoding": FAST}
        first = pool.submit(_post, c, body)  # taken by the worker, which waits at the gate
        time.sleep(0.2)
        queued = [pool.submit(_post, c, body) for _ in range(3)]  # one waits in the queue, two are refused
        codes = sorted(f.result().status_code for f in queued)
        assert codes == [503, 503, 504], codes
        assert first.result().status_code == 504
        gated.gate.set()  # a timed-out job keeps its queue slot until the worker reaches and drops it
        for _ in range(100):
            if c.get("/health").json()["queued"] == 0:
                break
            time.sleep(0.05)
        assert _post(c, body).status_code == 200  # the worker survived
        assert c.get("/health").json()["worker_alive"]


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


@pytest.fixture(scope="module")
def live(runset, runs):
    """uvicorn on 127.0.0.1, an ephemeral port; a report.html beside the runs."""
    import uvicorn

    (runs[0].parent / "report.html").write_text("<html><body>report</body></html>")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(Service(runset, Limits(max_queue=64))), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for _ in range(100):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(10)


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
