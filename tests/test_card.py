"""`sumtune export` writes a model card: Hub metadata that huggingface_hub itself parses, scores and
intervals equal to the run's RUN/eval/test/metrics.json, the data fingerprint of results.json, the
run's configuration; `--adapter` ships the PEFT adapter; `--push-to-hub` refuses in one line
(offline, no token, Hub unreachable, the network failing under the upload) with no real network."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_kaggle_dir
from method_utils import main_one_thread, make_run, padded_batch

from sumtune.cli import main
from sumtune.config import load_yaml
from sumtune.download import DOWNLOAD_RECORD
from sumtune.methods import get_method
from sumtune.metrics import ROUGE_KEYS
from sumtune.runs import load_run

SMALL = ["--batch-size", "4", "--grad-accum", "1", "--max-length", "160", "--precision", "fp32",
         "--set", "data.max_summary_length=48", "--max-eval-samples", "2", "--set", "method.lora.r=4",
         "--set", "method.prompt_tuning.n_tokens=2"]
# lora: 12 steps at a high rate, enough for the tiny model's summaries to share words with the references
STEPS = {"lora": ["--max-steps", "12", "--lr", "0.1"], "prompt_tuning": ["--max-steps", "1"]}
NAMES = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}


@pytest.fixture(scope="module")
def hub_model(tiny_neo, tmp_path_factory) -> Path:
    """tiny_neo as `sumtune download model someone/tiny-neo` leaves a Hub model: its card (license) and the record."""
    out = tmp_path_factory.mktemp("hub_model") / "tiny-neo"
    shutil.copytree(tiny_neo, out)
    (out / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- tiny\n---\n# tiny neo\n")
    (out / DOWNLOAD_RECORD).write_text(json.dumps({"repo_id": "someone/tiny-neo"}))
    return out


@pytest.fixture(scope="module")
def runs(hub_model, tiny_neo, tmp_path_factory) -> dict[str, Path]:
    """A lora run on hub_model, trained and evaluated on 3 test rows; a prompt_tuning run on the bare
    tiny_neo (no card, no record), not evaluated."""
    root = tmp_path_factory.mktemp("card_runs")
    data = write_kaggle_dir(root / "data", sizes=(8, 4, 4))
    for method, model in (("lora", hub_model), ("prompt_tuning", tiny_neo)):
        main_one_thread(["train", "--method", method, "--model", str(model), "--data", str(data),
                         "--output-dir", str(root / method), *SMALL, *STEPS[method]])
    main_one_thread(["evaluate", str(root / "lora"), "--limit", "3", "--max-new-tokens", "24"])
    return {"lora": root / "lora", "prompt_tuning": root / "prompt_tuning"}


def _card(directory: Path) -> tuple[dict, str]:
    """(front matter by yaml.safe_load, body) of directory/README.md."""
    text = (directory / "README.md").read_text(encoding="utf-8")
    m = re.match(r"---\n(.*?)\n---\n(.*)", text, re.S)
    assert m, text[:200]
    return yaml.safe_load(m.group(1)), m.group(2)


def _row(body: str, name: str) -> list[str]:
    rows = [line for line in body.splitlines() if line.startswith(f"| {name} |")]
    assert len(rows) == 1, body
    return [c.strip() for c in rows[0].strip("|").split("|")]


def test_card_states_the_run_and_its_test_scores(runs, tmp_path, capsys):
    from huggingface_hub import ModelCard, metadata_load

    run, out = runs["lora"], tmp_path / "plain"
    main_one_thread(["export", str(run), "--output-dir", str(out)])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"wrote {out}: a plain gpt_neo model")
    meta, body = _card(out)
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    results = json.loads((run / "results.json").read_text())
    assert meta["base_model"] == "someone/tiny-neo" and meta["license"] == "apache-2.0"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"sumtune", "lora", "summarization"} <= set(meta["tags"]) and "datasets" not in meta  # local data
    index = meta["model-index"][0]
    assert index["name"] == "plain"
    scores = {m["config"]: m["value"] for m in index["results"][0]["metrics"]}
    assert scores == {k: round(100 * metrics[k], 2) for k in ROUGE_KEYS}
    assert index["results"][0]["dataset"]["split"] == "test"
    for k in ROUGE_KEYS:  # the table: score, interval and n as metrics.json has them
        lo, hi = metrics["ci95"][k]
        assert _row(body, NAMES[k]) == [NAMES[k], f"{100 * metrics[k]:.2f}", f"[{100 * lo:.2f}, {100 * hi:.2f}]",
                                        str(metrics["n"])]
    assert metrics["n"] == 3 and f"n = {metrics['n']} of {metrics['split_rows']}" in body
    assert f"preset `{metrics['decoding']['preset']}`" in body and "max_new_tokens=24" in body
    assert results["data"]["fingerprint"]["sha256"] in body
    for f in results["data"]["fingerprint"]["files"].values():
        assert f["sha256"] in body
    assert results["base_model"]["weights_sha"] in body
    config = yaml.safe_load(body.split("```yaml\n", 1)[1].split("```", 1)[0])
    saved = load_yaml(run / "config.yaml")
    saved.pop("output_dir")
    lora_keys = {"name", *(f.name for f in dataclasses.fields(get_method("lora").config_class))}
    saved["method"] = {k: v for k, v in saved["method"].items() if k in lora_keys}
    assert config == saved and "n_tokens" not in config["method"]  # the method section: lora's own keys
    # huggingface_hub reads the same metadata back (the Hub's own parser of README.md front matter)
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "someone/tiny-neo" and card.data.license == "apache-2.0"
    assert {r.metric_config: r.metric_value for r in card.data.eval_results} == scores
    assert all(r.task_type == "summarization" and r.dataset_split == "test" for r in card.data.eval_results)
    assert metadata_load(out / "README.md")["library_name"] == "transformers"
    assert not (out / "adapter_config.json").exists()


def _card_code_summarises_as_sumtune(run: Path, body: str) -> None:
    """The card's Python, run as it stands, gives `sumtune summarize`'s summaries (24 new tokens)."""
    from sumtune.recipes.evaluate import summarize_text
    from sumtune.tiny import synthetic_news

    code = body.split("```python\n", 1)[1].split("```", 1)[0]
    for row in synthetic_news(3, seed=5):
        scope = {"text": row["article"]}
        exec(code, scope)
        assert scope["summary"] == summarize_text(run, row["article"], overrides={"max_new_tokens": 24})


def test_card_code_summarises_as_sumtune(runs, tmp_path):
    """The card's Python, run as it stands on the exported model, gives `sumtune summarize`'s summaries
    with the evaluated decoding (fp32 greedy)."""
    run, out = runs["lora"], tmp_path / "plain"
    main_one_thread(["export", str(run), "--output-dir", str(out)])
    _, body = _card(out)
    _card_code_summarises_as_sumtune(run, body)


def test_lora_adapter_export_loads_with_peft(runs, hub_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, out = runs["lora"], tmp_path / "adapter"
    main_one_thread(["export", str(run), str(out), "--adapter"])  # the positional OUT still works
    meta, _ = _card(out)
    assert meta["library_name"] == "peft" and meta["base_model"] == "someone/tiny-neo" and "model-index" in meta
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "someone/tiny-neo"
    assert not (out / "sumtune.json").exists()
    _, _, model, tok = load_run(run)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(hub_model), str(out)).eval()
    batch = padded_batch(tok)
    with torch.no_grad():
        torch.testing.assert_close(peft(**batch).logits, model(**batch).logits, rtol=0, atol=1e-5)


def test_unevaluated_soft_prompt_adapter(runs, tiny_neo, tmp_path, capsys):
    """No evaluation: no scores anywhere; no card on the base model: no license; the Hub id from --base-model."""
    from huggingface_hub import ModelCard
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, out = runs["prompt_tuning"], tmp_path / "soft"
    assert main(["export", str(run), "--output-dir", str(out)]) == 2  # not as a plain model
    assert "--adapter" in capsys.readouterr().err and not out.exists()
    main_one_thread(["export", str(run), "--output-dir", str(out), "--adapter", "--base-model", "someone/base"])
    meta, body = _card(out)
    assert meta["base_model"] == "someone/base" and meta["library_name"] == "peft"
    assert {"sumtune", "prompt_tuning", "summarization"} <= set(meta["tags"])
    assert not {"license", "model-index", "metrics", "model_name"} & set(meta)
    assert "Not evaluated" in body and "| ROUGE-1 |" not in body and "Not recorded" in body
    assert ModelCard.load(out / "README.md").data.eval_results is None
    _, _, model, _ = load_run(run)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_neo), str(out))
    torch.testing.assert_close(peft.get_prompt(batch_size=1)[0], model.soft_prompt, rtol=0, atol=0)


def test_adapter_of_a_method_without_one(tiny_neo, tmp_path, capsys):
    run, *_ = make_run(tmp_path / "run", tiny_neo, "zero_shot")
    assert main(["export", str(run), "--output-dir", str(tmp_path / "out"), "--adapter"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no PEFT adapter" in err and not (tmp_path / "out").exists()
    assert main(["export", str(run)]) == 2 and "--output-dir" in capsys.readouterr().err


# --- --push-to-hub -----------------------------------------------------------------------


@pytest.fixture
def online(monkeypatch, tmp_path):
    """The Hub clients out of offline mode, with no token from the environment or the user's token file."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)


def _push_fails(argv, capsys, says: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err, err


def _nothing_loads(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the export loaded the model before refusing the push")

    monkeypatch.setattr("sumtune.export.load_run", refuse)
    monkeypatch.setattr("sumtune.export._write_tokenizer", refuse)


def test_push_refused_before_the_export(runs, tmp_path, capsys, monkeypatch, online):
    import huggingface_hub.constants as c

    out = tmp_path / "out"
    argv = ["export", str(runs["lora"]), "--output-dir", str(out), "--push-to-hub", "me/card"]
    _nothing_loads(monkeypatch)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1, as conftest sets it
    _push_fails(argv, capsys, "offline mode")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    _push_fails(argv, capsys, "no Hugging Face token")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr("sumtune.hub.hub_reachable", lambda: False)
    _push_fails(argv, capsys, "is unreachable")
    _push_fails(argv[:-1] + ["not a repo"], capsys, "--push-to-hub not a repo")
    _push_fails(["export", str(runs["prompt_tuning"]), "--output-dir", str(out), "--adapter", "--push-to-hub",
                 "me/card"], capsys, "pass --base-model ID")
    _push_fails(["export", str(runs["lora"]), "--output-dir", str(out), "--private"], capsys, "--push-to-hub")
    assert not out.exists()


def test_push_network_failure_keeps_the_export(runs, tmp_path, capsys, monkeypatch, online):
    """The Hub answered the probe, then the network went: huggingface_hub's own request to a closed
    port fails; one line, and the exported directory stays."""
    import socket

    import huggingface_hub.constants as c

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(c, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr("sumtune.hub.hub_reachable", lambda: True)
    out = tmp_path / "out"
    _push_fails(["export", str(runs["lora"]), "--output-dir", str(out), "--adapter", "--push-to-hub", "me/card"],
                capsys, "cannot reach the Hugging Face Hub to push me/card")
    assert (out / "README.md").is_file() and (out / "adapter_model.safetensors").is_file()


def test_push_uploads_the_exported_directory(runs, tmp_path, capsys, monkeypatch, online):
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    calls = {}

    def create_repo(self, repo_id, **kw):
        calls["create"] = {"repo_id": repo_id, "token": self.token, **kw}
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kw):
        calls["upload"] = {**kw, "files": sorted(p.name for p in Path(kw["folder_path"]).iterdir())}

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr("sumtune.hub.hub_reachable", lambda: True)
    out = tmp_path / "out"
    main_one_thread(["export", str(runs["lora"]), "--output-dir", str(out), "--adapter", "--push-to-hub",
                     "me/card", "--private"])
    assert calls["create"]["repo_id"] == "me/card" and calls["create"]["private"] is True
    assert calls["create"]["token"] == "hf_not_a_real_token"
    up = calls["upload"]
    assert up["repo_id"] == "me/card" and Path(up["folder_path"]) == out and up["ignore_patterns"] == ["sumtune_export.json"]
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= set(up["files"])
    meta, body = _card(out)
    assert meta["model-index"][0]["name"] == "card" and "from_pretrained('someone/tiny-neo'), 'me/card')" in body
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"pushed {out} to https://huggingface.co/me/card"


def test_card_code_of_a_chat_format_run_summarises_as_sumtune(tmp_path):
    """With `data.prompt_format: chat` the card's Python builds the template's prompt and stops at the
    turn's end: `sumtune summarize`'s summaries again."""
    from sumtune.tiny import build_tiny_model, synthetic_news

    rows = synthetic_news(60, seed=1)
    texts = [f"<|im_start|>user\n{r['article']}<|im_end|>\n<|im_start|>assistant\n{r['highlights']}<|im_end|>"
             for r in rows]
    model = build_tiny_model(tmp_path / "chat_model", texts, arch="gpt2", chat=True)
    data = write_kaggle_dir(tmp_path / "data", sizes=(8, 4, 4))
    run, out = tmp_path / "run", tmp_path / "plain"
    main_one_thread(["train", "--method", "lora", "--model", str(model), "--data", str(data), "--output-dir", str(run),
                     *SMALL, *STEPS["lora"], "--set", "data.prompt_format=chat",
                     "--set", "data.system_prompt=You write one-line news summaries."])
    main_one_thread(["evaluate", str(run), "--limit", "3", "--max-new-tokens", "24"])
    main_one_thread(["export", str(run), "--output-dir", str(out)])
    _, body = _card(out)
    assert "chat template" in body
    _card_code_summarises_as_sumtune(run, body)
