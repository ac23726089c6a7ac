"""The model card (README.md) `sumtune export` writes beside a model or adapter: the Hub's YAML
metadata (built by huggingface_hub's own `ModelCardData`, so the Hub parses what it wrote) and a
body that says what the run was: method, base model, data and its fingerprint, the run's
configuration, the decoding and the test ROUGE with its 95% intervals and n.

Only what the run recorded is stated: no RUN/eval/test/metrics.json, no scores (the card says
the run was not evaluated, and has no `model-index`). The run's own test split is the headline (and
the only `model-index` result); its evaluations on other data (RUN/eval/on-<label>/test/) follow it,
each labelled with its data. Hub ids:
- `base_model`: the `--base-model` given, else model.name when it is a Hub name, else the
  `repo_id` that `sumtune download model` recorded in the model directory (DOWNLOAD_RECORD);
  a local directory with none of these gets no `base_model` (the body names the path).
- `license`: from the base model's own card (README.md front matter: `license`, and
  `license_name`/`license_link` for `other`) in its local directory or the local Hub cache;
  unknown, the key is left out (not guessed, not "other") and the body says so.
- `datasets`: the dataset id of an `hf:NAME[:CONFIG]` source; a local file or directory has none.

A base model from a GGUF file (or a named real model, `sumtune.gguf_files`) gets no `base_model`
id; the body names the file, its sha256 and its quantization (from the run's fingerprint), and the
`license` is the one the file's metadata states (general.license), when it states one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from huggingface_hub import EvalResult, ModelCardData, metadata_load, try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id

from sumtune.card_code import AUTOCAST, card_python, summarize_command
from sumtune.config import Config, decoding_summary
from sumtune.download import DOWNLOAD_RECORD
from sumtune.errors import UserError
from sumtune.fingerprints import data_label
from sumtune.gguf_files import NAMED_MODELS, is_gguf_model, named_model_dir, source_record
from sumtune.io import read_json
from sumtune.metrics import ROUGE_KEYS
from sumtune.modeling import resolve_precision
from sumtune.offline import is_local_model
from sumtune.runs import RunDir

ROUGE_NAMES = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}
LICENSE_KEYS = ("license", "license_name", "license_link")


def base_model_id(model_name: str, given: str | None = None) -> str | None:
    """The base model's Hub id, when it is known (module docstring)."""
    if given:
        try:
            validate_repo_id(given)
        except HFValidationError:
            raise UserError(f"--base-model {given}: not a Hub model id (OWNER/NAME); pass the id the base model "
                            "has on the Hugging Face Hub") from None
        return given
    if not is_local_model(model_name):
        return model_name
    record = Path(model_name).expanduser() / DOWNLOAD_RECORD
    return read_json(record).get("repo_id") if record.is_file() else None


def base_card_path(model_name: str, hub_id: str | None) -> Path | None:
    """The base model's README.md: in its directory, else in the local Hub cache (never fetched)."""
    local = Path(model_name).expanduser() / "README.md"
    if is_local_model(model_name) and local.is_file():
        return local
    if hub_id:
        cached = try_to_load_from_cache(hub_id, "README.md")
        if isinstance(cached, str):
            return Path(cached)
    return None


def base_license(model_name: str, hub_id: str | None) -> dict[str, str]:
    """{license[, license_name, license_link]} from the base model's card (a GGUF file: its
    general.license); {} when unknown."""
    if is_gguf_model(model_name):
        license_ = (source_record(model_name) or {}).get("license")
        return {"license": str(license_)} if license_ else {}

    path = base_card_path(model_name, hub_id)
    try:
        meta = (metadata_load(path) or {}) if path else {}
    except (yaml.YAMLError, UnicodeDecodeError):
        return {}
    return {k: str(meta[k]) for k in LICENSE_KEYS if isinstance(meta.get(k), (str, int, float))}


def hub_dataset(source: str) -> tuple[str, str | None] | None:
    """(dataset id, config) of an `hf:NAME[:CONFIG]` source; None for local data."""
    if not source.strip().startswith("hf:"):
        return None
    name, _, conf = source.strip()[3:].partition(":")
    return name, conf or None


def test_metrics(run: Path) -> dict[str, Any] | None:
    """RUN/eval/test/metrics.json (a complete evaluation), or None when the run was not evaluated."""
    path = RunDir(run).eval_dir("test") / "metrics.json"
    return read_json(path) if path.is_file() else None


def other_test_metrics(run: Path) -> list[tuple[str, dict[str, Any]]]:
    """(label, metrics.json) of each test evaluation on other data than the run trained on, by label."""
    return [(label, read_json(d / "metrics.json")) for label, d in RunDir(run).other_evals("test")]


def score(value: float) -> float:
    """ROUGE F1 as the card states it: x100, two decimals (model-index and the table)."""
    return round(100 * value, 2)


def card_metadata(cfg: Config, method, metrics: dict | None, *, adapter: bool, name: str,
                  base_id: str | None, license_: dict[str, str]):
    """The front matter as a huggingface_hub `ModelCardData`."""
    dataset = hub_dataset(cfg.data.source)
    results = None
    if metrics is not None:
        evaluated = hub_dataset(metrics.get("data") or cfg.data.source)
        data_name = evaluated[0] if evaluated else Path(metrics.get("data") or cfg.data.source).name
        results = [EvalResult(task_type="summarization", task_name="Summarization",
                              dataset_type=data_name, dataset_name=data_name,
                              dataset_config=evaluated[1] if evaluated else None, dataset_split="test",
                              metric_type="rouge", metric_name=f"Test {ROUGE_NAMES[k]}", metric_config=k,
                              metric_value=score(metrics[k])) for k in ROUGE_KEYS]
    return ModelCardData(
        base_model=base_id, datasets=[dataset[0]] if dataset else None,
        library_name="peft" if adapter else "transformers", pipeline_tag="text-generation",
        tags=["sumtune", method.name, "summarization"], metrics=["rouge"] if metrics else None,
        model_name=name if results else None, eval_results=results, **license_,
    )


def _fingerprint_lines(data: dict | None) -> list[str]:
    fp = (data or {}).get("fingerprint")
    if not fp:
        return ["- Data fingerprint: not recorded by this run"]
    lines = [f"- Data fingerprint ({fp.get('kind')}): sha256 `{fp.get('sha256')}`"]
    for fname, f in sorted((fp.get("files") or {}).items()):
        lines.append(f"  - `{fname}`: sha256 `{f['sha256']}`, {f['bytes']} bytes")
    for split, s in sorted((fp.get("splits") or {}).items()):
        lines.append(f"  - {split}: datasets fingerprint `{s['fingerprint']}`, {s['rows']} rows")
    return lines


def _other_data_lines(others: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The test evaluations on other data, one table row each, labelled with the data."""
    if not others:
        return []
    lines = ["", "### On other data", "",
             "Test evaluations on data other than the run's training data (each in `eval/on-<label>/test/`); "
             "not the scores above, and not in the metadata.", "",
             "| data | label | n | " + " | ".join(ROUGE_NAMES[k] for k in ROUGE_KEYS) + " | decoding |",
             "|" + "---|" * (len(ROUGE_KEYS) + 4)]
    for label, m in others:
        data = data_label(m["dataset"]) if m.get("dataset") else str(m.get("data"))
        whole = " (the whole file)" if (m.get("dataset") or {}).get("whole_file") else ""
        of = f" of {m['split_rows']}" if m.get("split_rows") else ""
        cells = [f"{score(m[k]):.2f} [{score(m['ci95'][k][0]):.2f}, {score(m['ci95'][k][1]):.2f}]" for k in ROUGE_KEYS]
        lines.append(f"| {data.replace('|', '/')}{whole} | `{label}` | {m['n']}{of} | " + " | ".join(cells)
                     + f" | {(m.get('decoding') or {}).get('label', '-')} |")
    return lines


def _evaluation(cfg: Config, metrics: dict | None, run: Path,
                others: list[tuple[str, dict[str, Any]]] = ()) -> list[str]:
    others = list(others)
    if metrics is None:
        dec = decoding_summary(cfg.eval)
        return ["## Evaluation", "",
                f"Not evaluated: the run has no test evaluation ({RunDir(run).eval_dir('test') / 'metrics.json'} "
                "is absent), so this card reports no scores; `sumtune evaluate RUN` writes one, then export again.",
                "", f"Configured decoding (not used for any score here): preset `{dec['label']}`, "
                + ", ".join(f"{k}={v}" for k, v in dec.items() if k not in ("preset", "label", "modified")),
                *_other_data_lines(others)]
    boot = metrics.get("bootstrap") or {}
    dec = metrics.get("decoding") or {}
    of = f" of {metrics['split_rows']}" if metrics.get("split_rows") else ""
    lines = ["## Evaluation", "",
             f"Test split, n = {metrics['n']}{of} articles; ROUGE F1 x 100 (rouge-score, stemmed; "
             f"ROUGE-Lsum over sentences split by {metrics.get('sentence_splitter', 'the splitter')}), "
             f"95% intervals: {boot.get('method', 'bootstrap')}, {boot.get('resamples')} resamples "
             f"(seed {boot.get('seed')}).", "",
             "| metric | score | 95% interval | n |", "|---|---|---|---|"]
    for k in ROUGE_KEYS:
        lo, hi = metrics["ci95"][k]
        lines.append(f"| {ROUGE_NAMES[k]} | {score(metrics[k]):.2f} | [{score(lo):.2f}, {score(hi):.2f}] "
                     f"| {metrics['n']} |")
    settings = ", ".join(f"{k}={v}" for k, v in dec.items() if k not in ("preset", "label", "modified"))
    lines += ["", f"Decoding: preset `{dec.get('preset')}`"
              + (f" with {', '.join(dec['modified'])} changed" if dec.get("modified") else "") + f"; {settings}.",
              f"Test loss (summary tokens): {metrics['loss']:.4f}."]
    if metrics.get("data") and not metrics.get("data_is_training_data", True):
        lines.append(f"Evaluated on other data than the run trained on: `{metrics['data']}`.")
    return lines + _other_data_lines(others)


def _base_load(base: str, model_name: str, gguf: dict | None) -> str:
    """The Python that loads the base model: by Hub id or directory, or a GGUF file with Transformers'
    own reader (its dequantized weights are the ones sumtune converted)."""
    if gguf:
        path = (named_model_dir(model_name) / NAMED_MODELS[model_name].filename if model_name in NAMED_MODELS
                else Path(model_name))
        return f"AutoModelForCausalLM.from_pretrained({str(path.parent)!r}, gguf_file={path.name!r})"
    return f"AutoModelForCausalLM.from_pretrained({base!r})"


def _gguf_lines(gguf: dict | None) -> list[str]:
    if not gguf:
        return []
    return [f"- GGUF source: `{gguf.get('file')}` (sha256 `{gguf.get('sha256')}`, {gguf.get('bytes'):,} bytes, "
            f"quantization {gguf.get('quantization')}, architecture {gguf.get('architecture')})"
            + (f", named model `{gguf['named_model']}`" if gguf.get("named_model") else "")
            + "; its tensors dequantized to fp32 by Transformers' GGUF reader, which the method trained on"]


def _decoding(cfg: Config, metrics: dict | None) -> dict:
    """The decoding the card's code uses: the evaluated one, else the configured one."""
    return (metrics or {}).get("decoding") or decoding_summary(cfg.eval)


def _precision(cfg: Config, metrics: dict | None) -> tuple[str, str]:
    """(precision, how the card knows it): the one the test scores were taken in (metrics.json records it);
    for an older evaluation or none, `train.precision` as `summarize` resolves it on this machine."""
    if metrics and metrics.get("precision"):
        return metrics["precision"], f"the test scores were taken in {metrics['precision']}"
    try:
        here = resolve_precision(cfg.train.precision, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    except UserError:  # fp16 configured, exported on a machine without CUDA: the card moves the model to a GPU
        here = cfg.train.precision
    if cfg.train.precision != "auto":
        why = f"`train.precision: {cfg.train.precision}`"
    else:
        why = f"`train.precision: auto`, which sumtune resolves to {here} on the machine that exported this model"
    return here, (f"{why}; the evaluation did not record its precision (it predates the record)" if metrics
                  else why)


def _use(cfg: Config, metrics: dict | None) -> list[str]:
    """What the card's code does and what it equals."""
    dec, (precision, how) = _decoding(cfg, metrics), _precision(cfg, metrics)
    clean = " cleans it as sumtune did (`sumtune.data.clean`: whitespace, CNN/DM bylines and tags)," \
        if cfg.data.clean else ""
    kind = "evaluated" if metrics else "configured"
    cast = f" with autocast to {precision} over the fp32 weights, as sumtune decodes" if precision in AUTOCAST else ""
    return [f"`text`: the article. The code{clean} builds the prompt as sumtune does (the article cut in tokens to "
            f"fit `data.max_length`), decodes with the {kind} decoding in {precision}{cast} ({how}), and gives the "
            f"summary that `{summarize_command(dec, precision)}` prints.", "",
            "`generate`'s own `no_repeat_ngram_size` would also ban every n-gram of the article (the prompt), its "
            "`min_new_tokens` holds back EOS only, and it has no blank-line stop: `SummaryLogits` bans repeats within "
            "the summary only and holds back every stop, `SummaryEnd` ends a summary at a stop token or a blank line "
            "(in beam search each candidate that ends becomes a finished hypothesis, as in sumtune's). In fp32 the "
            "summary is sumtune's, token for token (tested, greedy and beam search: plain and prompt-tuning exports of "
            "tiny models, SmolLM2-135M-Instruct on real CNN articles); in bf16 "
            "or fp16 one can differ where kernels round differently (sumtune prefills each prompt alone, decodes "
            "rows in batches and has fast paths of its own). The scores below come from sumtune's own batched "
            "decoder."]


def card_text(run: Path, cfg: Config, method, *, adapter: bool, name: str, where: str,
              base_model: str | None = None) -> str:
    """README.md for an export of `run` loaded from `where` (a Hub repo id or the directory);
    the module docstring says what each field comes from."""
    results = read_json(RunDir(run).results)
    meta = read_json(RunDir(run).adapter / "sumtune.json")
    metrics = test_metrics(run)
    base_id = base_model_id(cfg.model.name, base_model)
    license_ = base_license(cfg.model.name, base_id)
    data = results.get("data") or meta.get("data")
    fp = results.get("base_model") or meta.get("base_model") or {}
    gguf = fp.get("gguf")
    opts = method.options(cfg.method)
    what = "A PEFT adapter" if adapter else "A causal language model"
    base = f"[{base_id}](https://huggingface.co/{base_id})" if base_id else f"a local model (`{cfg.model.name}`)"
    if gguf and not base_id:
        base = f"the GGUF file `{gguf.get('file')}` ({gguf.get('quantization')}, dequantized to fp32)"
    sizes = results.get("data_sizes") or (data or {}).get("sizes") or {}
    config = cfg.to_dict()
    config.pop("output_dir", None)
    config["method"] = {"name": method.name, **method.method_config(cfg.method)}  # its own keys only
    body = [
        f"# {name}", "",
        f"{what} for summarization, trained with sumtune's method **{method.name}** ({method.describe(opts)}) "
        f"from {base}. " + (f"The prompt is the article followed by `{cfg.data.separator!r}`; the summary follows it."
                            if cfg.data.prompt_format != "chat" else
                            "The prompt is the tokenizer's chat template up to the assistant's turn; the summary is that turn."),
        "", "## Use", "", *_use(cfg, metrics), "",
        "```python", *card_python(cfg.data, _decoding(cfg, metrics), _precision(cfg, metrics)[0],
                                  peft_type=read_json(RunDir(run).adapter / "adapter_config.json")["peft_type"]
                                  if adapter else None, where=where, base=_base_load(base_id or cfg.model.name, cfg.model.name, gguf),
                                  model_name=cfg.model.name),
        "```", "",
        "## Training", "",
        f"- Method: {method.name}: {method.describe(opts)}",
        f"- Base model: {base_id or cfg.model.name} (config sha `{fp.get('config_sha')}`, "
        f"weights sha `{fp.get('weights_sha')}`)",
        *_gguf_lines(gguf),
        f"- Data: `{cfg.data.source}`" + (f" ({', '.join(f'{s} {n}' for s, n in sizes.items())} rows)" if sizes else ""),
        *_fingerprint_lines(data),
    ]
    if results.get("trainable_params") is not None:
        body.append(f"- Trainable parameters: {results['trainable_params']:,} of {results['total_params']:,} "
                    f"({results['trainable_pct']:.3f}%)")
    if results.get("steps") is not None:
        body.append(f"- Optimizer steps: {results['steps']} (epochs {results.get('epochs_run')}); kept step "
                    f"{results.get('best_step')} by validation {results.get('select_by', 'loss')}")
    body += ["", "### Hyper-parameters (the run's configuration; `method`: this method's keys)", "", "```yaml",
             yaml.safe_dump(config, sort_keys=False).rstrip(), "```", "",
             *_evaluation(cfg, metrics, run, other_test_metrics(run)), "", "## License", ""]
    if license_:
        body.append(f"`{license_['license']}`, as the base model's "
                    + ("GGUF file states (general.license)" if gguf else "card states")
                    + (f" ({license_.get('license_name')}: {license_.get('license_link')})"
                       if license_.get("license_link") else "") + ".")
    else:
        body.append("Not recorded: the base model's card was not found locally, so no `license` is set; "
                    "check the base model's license and add it to this card's metadata before publishing.")
    data_card = card_metadata(cfg, method, metrics, adapter=adapter, name=name, base_id=base_id, license_=license_)
    return f"---\n{data_card.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"
