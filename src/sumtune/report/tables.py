"""The Markdown of `sumtune compare`: a header saying what the figures are, the runs' costs,
their scores with 95% intervals, their evaluations on other data (labelled, apart), seeds
(mean ± sd) and the pairwise tests."""

from __future__ import annotations

from collections.abc import Sequence

from sumtune.bertscore import BERTSCORE_KEYS
from sumtune.metrics import ROUGE_KEYS
from sumtune.report.stats import BERTSCORE_TESTED, TESTED_KEYS, bertscore_settings

ROUGE_NAMES = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}
BERTSCORE_NAMES = {"bertscore_precision": "BERTScore P", "bertscore_recall": "BERTScore R",
                   "bertscore_f1": "BERTScore F1"}
SCORE_NAMES = {**ROUGE_NAMES, **BERTSCORE_NAMES}


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body]) + "\n"


def _params(row: dict) -> str:
    t = row["trainable_params"]
    if t is None:
        return "-"
    return f"{t:,} ({row['trainable_pct']:.3g}%)" if row["trainable_pct"] is not None else f"{t:,}"


def _lr(row: dict) -> str:
    if row["lr"] is None:
        return "-"
    return f"{row['lr']:g}" + (f" (at {row['lr_edge']} grid edge)" if row.get("lr_edge") else "")


def _epochs(row: dict) -> str:
    text = f"{row['epochs_run']:g}" if row["epochs_run"] is not None else "-"
    if row.get("best_step") is not None:
        text += f" (best step {row['best_step']})"
    return text + (", early stop" if row.get("early_stopped") else "")


def _budget_limit(b: dict) -> str:
    return f"{b['limit']:g} s of optimizer steps" if b["kind"] == "seconds" else f"{b['limit']:.3g} training FLOPs"


def _within_budget(row: dict) -> str:
    """What a budget run spent and reached within it, and what stopped it when not the budget."""
    b = row.get("budget")
    if not b:
        return "-"
    if b.get("stopped_by") == "no training":
        return "no training"
    spent = (f"{b['spent']:.1f} of {b['limit']:g} s" if b["kind"] == "seconds"
             else f"{b['spent']:.3g} of {b['limit']:.3g} FLOPs")
    stop = "" if b["stopped_by_budget"] else f" (stopped by {b['stopped_by']} first)"
    return f"{spent}: {b['steps']} steps, {b['epochs']:g} epochs, {b['tokens']:,} tokens{stop}"
def _selected(row: dict) -> str:
    """What chose the kept checkpoint: "loss", or the validation ROUGE key with its best score
    ("-" where nothing trained)."""
    if row["lr"] is None:
        return "-"
    if row.get("best_score") is None:
        return str(row.get("select_by") or "loss")
    return f"{row['select_by']} {100 * row['best_score']:.2f}"


def cost_body(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """The cost table's header and cells (shared by the Markdown and the HTML report); budget runs
    add a column: what each spent and reached within its budget."""
    head = ["run", "method", "what trained", "seed", "lr", "trainable params (% of total)", "epochs",
            "train s", "validation s", "sweep s", "peak memory MB", "tokens/s", "best val loss", "selected by"]
    body = [[r["run"], r["method"], r["trained"], str(r["seed"]), _lr(r), _params(r), _epochs(r),
             _num(r["train_seconds"], ".1f"), _num(r["validation_seconds"], ".1f"), _num(r["sweep_seconds"], ".1f"),
             f"{_num(r['peak_memory_mb'], '.0f')} ({r['peak_memory_kind']})", _num(r["tokens_per_s"], ".0f"),
             _num(r["best_val_loss"], ".4f"), _selected(r)] for r in rows]
    if any(r.get("budget") for r in rows):
        head.append("within the budget: spent, steps, epochs, tokens")
        for cells, r in zip(body, rows):
            cells.append(_within_budget(r))
    return head, body


def cost_table(rows: Sequence[dict]) -> str:
    return _table(*cost_body(rows))


def _score(row: dict, key: str) -> str:
    value, ci = row[key], (row.get("ci95") or {}).get(key)
    if value is None:
        return "-"
    return f"{100 * value:.2f}" + (f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else "")


def _cross_data(rows: Sequence[dict]) -> bool:
    """Whether any run was evaluated on other data than it trained on."""
    return any(r["evaluated"] and r.get("eval_on_training_data") is False for r in rows)


def _test_data(row: dict) -> str:
    if not row["evaluated"]:
        return "-"
    return "its training data" if row.get("eval_on_training_data") is not False else \
        f"{row.get('eval_data_label')} (not its training data)"


def score_body(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """The score table's header and cells; BERTScore P/R/F1 columns when any run has them; when a run
    was evaluated on other data than it trained on, a column names each row's test data (preset, source,
    fingerprint)."""
    keys = ROUGE_KEYS + (BERTSCORE_KEYS if any(r.get(BERTSCORE_TESTED) is not None for r in rows) else ())
    head = ["run", "n", "decoding", "loss", *[SCORE_NAMES[k] for k in keys],
            "mean length, generated / reference (tokens)"]
    body = []
    for r in rows:
        if not r["evaluated"]:
            body.append([r["run"], "-", "-", "not evaluated", *["-"] * len(keys), "-"])
            continue
        lengths = f"{_num(r['mean_prediction_tokens'], '.1f')} / {_num(r['mean_reference_tokens'], '.1f')}"
        preset = (r["decoding"] or {}).get("label", "-")
        body.append([r["run"], str(r["n_test"]), str(preset), _num(r["test_loss"], ".4f"),
                     *[_score(r, k) for k in keys], lengths])
    if _cross_data(rows):
        head.insert(1, "test data")
        for cells, r in zip(body, rows):
            cells.insert(1, _test_data(r))
    return head, body


def score_table(rows: Sequence[dict]) -> str:
    return _table(*score_body(rows))


def other_data(rows: Sequence[dict]) -> list[dict]:
    """Every run's evaluations on other data (`rows.other_evaluations`), each with its run's name."""
    return [{"run": r["run"], **o} for r in rows for o in r.get("other_data") or []]


def _rows_of(o: dict) -> str:
    n = str(o["n"]) if o.get("n") is not None else "-"
    return f"{n} of {o['split_rows']:,}" if o.get("split_rows") else n


def other_data_body(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """The table of evaluations on other data: per run and data its label (the directory), n of the
    split's rows, decoding, loss and ROUGE (BERTScore where scored) with intervals."""
    others = other_data(rows)
    keys = ROUGE_KEYS + (BERTSCORE_KEYS if any(o.get(BERTSCORE_TESTED) is not None for o in others) else ())
    head = ["run", "data", "label", "n", "decoding", "loss", *[SCORE_NAMES[k] for k in keys]]
    body = [[o["run"], str(o["data_label"]) + (" (the whole file)" if o.get("whole_file") else ""), o["label"],
             _rows_of(o), str((o.get("decoding") or {}).get("label", "-")), _num(o.get("loss"), ".4f"),
             *[_score(o, k) for k in keys]] for o in others]
    return head, body


def other_data_note(split: str) -> str:
    """What the table of evaluations on other data holds (Markdown and HTML)."""
    return (f"Each run's evaluations of the {split} split of other data than it trained on (RUN/eval/on-LABEL/{split}/), "
            f"kept beside its own: the scores above stay on each run's own {split} split, and these enter no "
            "pairwise test, frontier or answer. n of the rows of that data's split; ROUGE as above.")


def other_data_table(rows: Sequence[dict]) -> str:
    return _table(*other_data_body(rows))


def _tested(entries: Sequence[dict]) -> tuple[str, ...]:
    """The ROUGE keys, and BERTScore F1 when any entry (seed summary or pair) has it."""
    return TESTED_KEYS if any(BERTSCORE_TESTED in e for e in entries) else ROUGE_KEYS


def seed_body(seeds: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    keys = _tested(seeds)
    head = ["method", "seeds", *[SCORE_NAMES[k] for k in keys], "best val loss"]
    body = [[s["method"], ", ".join(map(str, s["seeds"])),
             *[f"{100 * s[k]['mean']:.2f} ± {100 * s[k]['sd']:.2f}" if k in s else "-" for k in keys],
             f"{s['best_val_loss']['mean']:.4f} ± {s['best_val_loss']['sd']:.4f}" if s["best_val_loss"] else "-"]
            for s in seeds]
    return head, body


def seed_table(seeds: Sequence[dict]) -> str:
    return _table(*seed_body(seeds))


def pair_body(pairs: Sequence[dict], star: str = " **\\***") -> tuple[list[str], list[list[str]]]:
    """The pairwise table's header and cells; `star` marks a significant difference."""
    def cell(p: dict | None) -> str:
        if p is None:
            return "-"
        return (f"{100 * p['diff']:+.2f} [{100 * p['low']:+.2f}, {100 * p['high']:+.2f}] "
                f"p={p['p_value']:.3f}" + (star if p["significant"] else ""))

    keys = _tested(pairs)
    head = ["A − B", "n", *[SCORE_NAMES[k] for k in keys]]
    return head, [[f"{p['a']} − {p['b']}", str(p["n"]), *[cell(p.get(k)) for k in keys]] for p in pairs]


def pair_note(pairs: Sequence[dict], star: str) -> str:
    """What the pairwise table holds (Markdown and HTML; `star` as the table marks significance)."""
    points = "ROUGE and BERTScore" if BERTSCORE_TESTED in _tested(pairs) else "ROUGE"
    return (f"A − B in {points} points with its 95% interval and p-value; {star} = significant at 0.05 after "
            "Holm's correction over all pairs (of each metric). A method with several seeds enters with its "
            "per-document mean over seeds.")


def pair_table(pairs: Sequence[dict]) -> str:
    return _table(*pair_body(pairs))


def _decoding_text(decoding: dict | None) -> str:
    if not decoding:
        return "-"
    d = decoding
    if "rule" in d:  # no decoding: an extractive baseline's rule (lead3)
        return f"{d.get('label')} ({d['rule']})"
    ban = f"no repeated {d['no_repeat_ngram_size']}-gram" if d.get("no_repeat_ngram_size") else "no n-gram ban"
    return (f"{d.get('label', '?')} (beams {d.get('num_beams')}, {ban}, "
            f"length penalty {d.get('length_penalty')}, {d.get('min_new_tokens', 0)}–{d.get('max_new_tokens')} new "
            f"tokens" + (f", first {d['max_sentences']} sentences" if d.get("max_sentences") else "") + ")")


def _seeds_and_lr(rows: Sequence[dict]) -> str:
    """Per method: its seeds and its learning rate(s), e.g. "lora seeds 42, 43, lr 0.0003"."""
    seeds: dict[str, list[str]] = {}
    lrs: dict[str, list[str]] = {}
    for r in rows:
        seeds.setdefault(r["method"], []).append(str(r["seed"]))
        if _lr(r) not in lrs.setdefault(r["method"], []):
            lrs[r["method"]].append(_lr(r))
    return "; ".join(f"{m} seed{'s' if len(s) > 1 else ''} {', '.join(s)}, lr {', '.join(lrs[m])}"
                     for m, s in seeds.items()) or "-"


def facts(rows: Sequence[dict], split: str) -> list[tuple[str, str]]:
    """What the figures are, as (label, text): data, sizes, model, precision, split, decoding,
    seeds and lr per method, ROUGE, memory and times."""
    def distinct(key: str) -> str:
        values = sorted({str(r[key]) for r in rows if r.get(key) is not None})
        return ", ".join(values) or "-"

    sizes = next((r["data_sizes"] for r in rows if r.get("data_sizes")), None)
    # the rows training read (train, validation); the test rows scored are the n below, which an
    # evaluation's --limit sets apart from the training run's caps
    size_text = (", ".join(f"{k} {v:,}" for k, v in sizes.items() if k != "test") + " rows in training"
                 if sizes else "sizes not recorded")
    ns = sorted({r["n_test"] for r in rows if r["evaluated"]})
    decodings = {_decoding_text(r["decoding"]) for r in rows if r["evaluated"]}
    splitters = f"sentences split by {distinct('sentence_splitter')}"
    return [
        ("Data", f"{distinct('data')} ({size_text}); evaluated on the {split} split, n = "
                 f"{', '.join(map(str, ns)) or '-'} documents"),
        *([("Test data", "some runs were evaluated on other data than they trained on: "
                          + "; ".join(sorted({_test_data(r) for r in rows if r["evaluated"]}))
                          + "; pairwise tests pair documents of the same data only")] if _cross_data(rows) else []),
        *([("Other data", "evaluations on other data than the runs trained on ("
                           + "; ".join(sorted({o["data_label"] for o in other_data(rows)})) + ") are listed apart, "
                           f"labelled; the scores, tests and answer are on each run's own {split} split")]
          if other_data(rows) else []),
        ("Model", f"{distinct('model')}; precision {distinct('precision')}"),
        ("Decoding (same for every run" + (" with a model)" if any(r.get("extractive") for r in rows) else ")"),
         "; ".join(sorted(decodings)) or "-"),
        ("Seeds and lr per method", _seeds_and_lr(rows)),
        ("ROUGE", "F1 × 100, mean over documents (Google rouge-score, stemming), ROUGE-Lsum on "
                  f"{splitters}; [95% bootstrap interval over documents, 1,000 resamples]"),
        *_bertscore_fact(rows),
        ("Peak memory", f"{distinct('peak_memory_kind')} during training (RSS: the whole process)"),
        ("Times", "train s = optimizer steps only; validation s apart (with the summaries decoded for "
                  "selection by ROUGE); sweep s = the method's lr-sweep runs"),
        *_budget_fact(rows),
        ("Selection", "the kept checkpoint is the best validation loss, or with train.select_by the best "
                      "validation ROUGE (F1 × 100) of the first eval.select_samples validation rows; best val "
                      "loss is the loss at that checkpoint"),
    ]


def _bertscore_fact(rows: Sequence[dict]) -> list[tuple[str, str]]:
    """The BERTScore model(s), layer and rescaling, when any run was scored with it."""
    settings = bertscore_settings(rows)
    if not settings:
        return []
    used = "; ".join(f"{model}, layer {layer}, {'rescaled with its baseline' if rescaled else 'not rescaled'}"
                     for model, layer, rescaled in settings)
    tested = ("F1 tested pairwise as ROUGE is" if len(settings) == 1
              else "not tested pairwise: the runs used different BERTScore settings")
    return [("BERTScore", f"P / R / F1 × 100, mean over documents (bert-score, {used}, no idf); [95% bootstrap "
                          f"interval over documents, 1,000 resamples]; {tested}; a blank summary scores 0")]


def _budget_fact(rows: Sequence[dict]) -> list[tuple[str, str]]:
    """The budget the runs trained to, when any did (else equal steps/epochs: no line)."""
    limits = sorted({_budget_limit(r["budget"]) for r in rows if r.get("budget")})
    if not limits:
        return []
    fractions = sorted({f"{r['sweep_budget_fraction']:g}" for r in rows if r.get("sweep_budget_fraction")})
    sweep = (f"; each lr-sweep run had {' / '.join(fractions)} of it, spent beside it (sweep s)" if fractions else "")
    return [("Budget", f"{' / '.join(limits)} per run: each method trained until it had spent it, the epochs and "
                       "max steps capping it; warmup and decay of the learning rate fit it" + sweep)]


def header(rows: Sequence[dict], split: str) -> str:
    """The facts as a Markdown list."""
    return "\n".join(f"- **{label}:** {text}" for label, text in facts(rows, split)) + "\n"


def markdown(rows: Sequence[dict], seeds: Sequence[dict], pairs: Sequence[dict], split: str,
             answer: str = "", frontier: str = "") -> str:
    """compare.md's text; `answer` (the answer paragraph's section) leads, `frontier` follows the scores."""
    parts = ["# sumtune comparison\n", *([answer] if answer else []), header(rows, split),
             "## Runs: what trained and what it cost\n", cost_table(rows), f"## Scores on the {split} split\n",
             score_table(rows)]
    if other_data(rows):
        parts += [f"## Evaluations on other data ({split} split)\n", other_data_note(split) + "\n",
                  other_data_table(rows)]
    parts += [frontier] if frontier else []
    if seeds:
        parts += ["## Across seeds (mean ± sd)\n", seed_table(seeds)]
    if pairs:
        parts += ["## Pairwise differences (paired bootstrap over documents)\n",
                  pair_note(pairs, "**\\***") + "\n", pair_table(pairs)]
    return "\n".join(parts)
