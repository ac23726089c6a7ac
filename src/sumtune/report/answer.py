"""The answer paragraph: which method gives the best summaries for what it costs, in words
computed from the comparison, or that the data cannot tell.

Quality is the headline ROUGE-L F1 (frontier.HEADLINE); a method with several seeds scores the
mean of its runs. Significance is `stats.pairwise`'s paired bootstrap over the common documents,
Holm-corrected over every pair of methods, at stats.LEVEL; nothing else is called a difference.

Cost tiers, by training time (optimizer steps only, a method's mean over its seeds): tier 0 is
the methods that train nothing; the trained ones fall into tiers of a fixed factor relative to
the cheapest trained method: tier k holds the methods costing [c0 * F^(k-1), c0 * F^k) with
F = TIER_FACTOR = 3, i.e. within 3x of the cheapest, 3-9x, 9-27x, ... Fixed boundaries (not gaps
between neighbours) so that adding a run never regroups the others by chaining. Within a tier the
best method is compared with the tier's runner-up, and with the best of every cheaper tier
(whether the extra cost buys a difference the data can show).

No winner is named when the runs are the demo's (a tiny random model: meaningless summaries),
when no trained method is significantly better than zero_shot, or when no two methods differ
significantly; the paragraph then says so. Otherwise it names the cheapest method (by training
time) that no other method beats significantly. An extractive baseline without a model (lead3) is
a method of tier 0; when one is compared, a paragraph says which methods are significantly better
than it, which worse, and which the data cannot tell from it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sumtune.io import read_json
from sumtune.report.frontier import HEADLINE, cost, duration
from sumtune.report.stats import LEVEL, RESAMPLES

TIER_FACTOR = 3.0
TIER_RULE = (f"tiers by training time: tier 0 trains nothing; tier k ≥ 1 holds the methods costing "
             f"{TIER_FACTOR:g}^(k-1) to {TIER_FACTOR:g}^k times the cheapest trained method")
DEMO_TEXT = ("These runs come from the demo's tiny random model: its summaries are meaningless and no winner is "
             "implied; the figures only show that every step of the study runs.")


def is_demo(record: dict | None, runs: Sequence[Path]) -> bool:
    """Whether the experiment (its record, or an experiment.json beside any run) marked itself a demo."""
    if (record or {}).get("demo"):
        return True
    for parent in {Path(r).resolve().parent for r in runs}:
        path = parent / "experiment.json"
        if path.is_file() and read_json(path).get("demo"):
            return True
    return False


def methods_summary(rows: Sequence[dict]) -> list[dict]:
    """Per evaluated method: its runs, seeds, mean score, (single run's) interval, mean training seconds."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("evaluated") and r.get(HEADLINE) is not None:
            by.setdefault(r["method"], []).append(r)
    out = []
    for method, runs in by.items():
        secs = [cost(r, "train_seconds") for r in runs]
        out.append({"method": method, "runs": [r["run"] for r in runs], "seeds": [r["seed"] for r in runs],
                    "score": statistics.fmean(r[HEADLINE] for r in runs),
                    "ci95": (runs[0].get("ci95") or {}).get(HEADLINE) if len(runs) == 1 else None,
                    "train_seconds": None if None in secs else statistics.fmean(secs),
                    "extractive": bool(runs[0].get("extractive")), "base_as_is": bool(runs[0].get("base_as_is")),
                    "what": runs[0].get("trained")})
    return out


def tiers(methods: Sequence[dict], factor: float = TIER_FACTOR) -> list[dict]:
    """The cost tiers (module docstring), cheapest first; methods without a recorded training time
    come last, in a tier of their own."""
    trained = [m for m in methods if m["train_seconds"]]
    c0 = min((m["train_seconds"] for m in trained), default=None)
    groups: dict[int, list[dict]] = {}
    for m in methods:
        s = m["train_seconds"]
        k = -1 if s is None else 0 if s == 0 else 1 + math.floor(math.log(s / c0) / math.log(factor) + 1e-9)
        groups.setdefault(k, []).append(m)
    out = []
    for k in sorted(groups, key=lambda k: (k < 0, k)):
        members = sorted(groups[k], key=lambda m: -m["score"])
        if k < 0:
            label = "training time not recorded"
        elif k == 0:
            label = "tier 0 (no training)"
        else:
            label = (f"tier {k} (training {factor ** (k - 1):g}–{factor ** k:g}× the cheapest trained method: "
                     f"{duration(c0 * factor ** (k - 1))} to {duration(c0 * factor ** k)})")
        out.append({"tier": k, "label": label, "methods": [m["method"] for m in members]})
    return out


def versus(pairs: Sequence[dict], a: str, b: str) -> dict | None:
    """The headline paired test of a − b (sign turned when stats.pairwise holds b − a), or None."""
    for p in pairs:
        if {p["a"], p["b"]} == {a, b} and HEADLINE in p:
            t, sign = p[HEADLINE], 1 if p["a"] == a else -1
            low, high = sorted((sign * t["low"], sign * t["high"]))
            return {"a": a, "b": b, "n": p["n"], "diff": sign * t["diff"], "low": low, "high": high,
                    "p_holm": t["p_holm"], "significant": bool(t["significant"])}
    return None


def _better(t: dict | None) -> bool:
    return t is not None and t["significant"] and t["diff"] > 0


def _phrase(t: dict | None, a: str, b: str) -> str:
    if t is None:
        return f"{a} and {b} have no paired test (per-document scores missing, or no document in common)"
    figures = f"{100 * t['diff']:+.2f} points [{100 * t['low']:+.2f}, {100 * t['high']:+.2f}]"
    test = f"n = {t['n']}, p = {t['p_holm']:.3g} after Holm's correction"
    if t["significant"]:
        winner, loser = (a, b) if t["diff"] > 0 else (b, a)
        return f"{winner} is significantly better than {loser} ({figures} for {a} − {b}; {test})"
    return f"the data cannot tell {a} and {b} apart ({test}; {a} − {b} = {figures})"


def _score_text(m: dict) -> str:
    text = f"{100 * m['score']:.2f}"
    if m["ci95"]:
        text += f" [{100 * m['ci95'][0]:.2f}, {100 * m['ci95'][1]:.2f}]"
    return text + (f", mean of {len(m['seeds'])} seeds" if len(m["seeds"]) > 1 else "")


def _basis(rows: Sequence[dict], methods: Sequence[dict], split: str) -> str:
    ns = sorted({r["n_test"] for r in rows if r.get("evaluated") and r.get("n_test")})
    decodings = sorted({str((r.get("decoding") or {}).get("label", "not recorded")) for r in rows
                        if r.get("evaluated")})
    seeds = "; ".join(f"{m['method']} {', '.join(map(str, m['seeds']))}" for m in methods)
    return (f"ROUGE-L F1 × 100 on the {split} split, n = {', '.join(map(str, ns)) or '?'} documents, decoding "
            f"{', '.join(decodings) or '?'}; seeds: {seeds}. A difference counts when the paired bootstrap over "
            f"documents ({RESAMPLES:,} resamples) gives p < {LEVEL:g} after Holm's correction over all pairs of "
            f"methods (the intervals of differences are not adjusted); {TIER_RULE}.")


def _budget(rows: Sequence[dict]) -> tuple[dict | None, str | None]:
    """(the one budget every trained run shared, or None; a sentence about budgets, or None)."""
    budgets = [r.get("budget") for r in rows if r.get("evaluated") and cost(r, "train_seconds") != 0]
    known = [b for b in budgets if b]
    if not known:
        return None, None
    kinds = {(b.get("kind"), b.get("limit")) for b in known}
    if len(kinds) == 1 and len(known) == len(budgets):
        kind, limit = kinds.pop()
        unit = {"seconds": "training seconds", "flops": "training FLOPs"}.get(str(kind), str(kind))
        amount = f"{limit:.3g}" if isinstance(limit, float | int) else str(limit)
        return known[0], f"At an equal budget of {amount} {unit} for every trained run:"
    return None, "The trained runs had different budgets (or some none), so each tier compares what each run spent."


def _tier_sentence(tier: dict, by: dict[str, dict], pairs: Sequence[dict], cheaper: list[str]) -> tuple[str, dict]:
    names = tier["methods"]
    best = by[names[0]]
    facts: dict[str, Any] = {**tier, "best": best["method"], "runner_up": names[1] if len(names) > 1 else None}
    text = tier["label"][0].upper() + tier["label"][1:] + ": "
    if len(names) == 1:
        text += f"only {best['method']} ({_score_text(best)})"
    else:
        facts["vs_runner_up"] = versus(pairs, names[0], names[1])
        text += (f"{best['method']} scores highest ({_score_text(best)}), then {names[1]} "
                 f"({_score_text(by[names[1]])}); " + _phrase(facts["vs_runner_up"], names[0], names[1]))
    if cheaper:
        rival = max(cheaper, key=lambda m: by[m]["score"])
        facts["cheaper_best"], facts["vs_cheaper"] = rival, versus(pairs, best["method"], rival)
        t = facts["vs_cheaper"]
        verdict = ("untested" if t is None else "the extra cost buys a significant gain" if _better(t) else
                   "it is worse than the cheaper method" if t["significant"] else
                   "the extra cost buys no difference the data can show")
        text += f". Against the best cheaper method, {rival}: {verdict} — " + _phrase(t, best["method"], rival)
    return text + ".", facts


def _baseline_sentence(base: dict, methods: Sequence[dict], pairs: Sequence[dict]) -> tuple[str, dict]:
    """How every other method compares with an extractive baseline (lead3), from the paired tests."""
    name, groups = base["method"], {"better": [], "worse": [], "no_difference": [], "untested": []}
    tests = {}
    for m in methods:
        if m is base:
            continue
        t = tests[m["method"]] = versus(pairs, m["method"], name)
        key = "untested" if t is None else "no_difference" if not t["significant"] else \
            "better" if t["diff"] > 0 else "worse"
        groups[key].append(m["method"])

    def listed(names: list[str]) -> str:
        return ", ".join(f"{n} ({100 * tests[n]['diff']:+.2f} points [{100 * tests[n]['low']:+.2f}, "
                         f"{100 * tests[n]['high']:+.2f}], p = {tests[n]['p_holm']:.3g})" for n in names)

    text = f"Against {name}, the extractive baseline ({base['what']}; {_score_text(base)}): "
    parts = [f"significantly better: {listed(groups['better'])}" if groups["better"]
             else f"no method is significantly better than {name}"]
    if groups["no_difference"]:
        parts.append(f"not distinguishable from it: {', '.join(groups['no_difference'])}")
    if groups["worse"]:
        parts.append(f"significantly worse: {listed(groups['worse'])}")
    if groups["untested"]:
        parts.append(f"no paired test: {', '.join(groups['untested'])}")
    return text + "; ".join(parts) + " (differences in ROUGE-L points, Holm-corrected p).", {"method": name, **groups}


def _recommended(methods: Sequence[dict], pairs: Sequence[dict]) -> str | None:
    """The cheapest method (by training time; unknown last) that no other method significantly beats."""
    order = sorted(methods, key=lambda m: (m["train_seconds"] is None, m["train_seconds"] or 0, -m["score"]))
    for m in order:
        if not any(_better(versus(pairs, o["method"], m["method"])) for o in methods if o is not m):
            return m["method"]
    return None


def answer(rows: Sequence[dict], pairs: Sequence[dict], split: str, demo: bool = False) -> dict[str, Any]:
    """The paragraph (`text`, `paragraphs`) and the facts it is built from (`facts`)."""
    methods = methods_summary(rows)
    by = {m["method"]: m for m in methods}
    budget, budget_text = _budget(rows)
    facts: dict[str, Any] = {"metric": HEADLINE, "split": split, "demo": demo, "budget": budget, "level": LEVEL,
                             "tier_rule": TIER_RULE, "tier_factor": TIER_FACTOR, "methods": methods, "tiers": []}
    paragraphs = [DEMO_TEXT] if demo else []
    if not methods:
        facts["verdict"] = "no_runs"
        paragraphs.append(f"No run is evaluated on the {split} split yet: there is nothing to answer "
                          "(sumtune evaluate RUN).")
        return {"text": "\n\n".join(paragraphs), "paragraphs": paragraphs, "facts": facts}
    paragraphs.append(_basis(rows, methods, split))
    lines, cheaper = [], []
    for tier in tiers(methods):
        text, tier_facts = _tier_sentence(tier, by, pairs, cheaper if tier["tier"] >= 0 else [])
        lines.append(text)
        facts["tiers"].append(tier_facts)
        cheaper += tier["methods"]
    intro = [budget_text] if budget_text else []
    if demo:
        intro.append("What the rules compute on these numbers (not a finding):")
    paragraphs += [" ".join(intro + lines[:1]), *lines[1:]]  # a paragraph per tier
    facts["versus_baselines"] = []
    if len(methods) > 1:
        for base in (m for m in methods if m["extractive"]):  # lead3: how the others compare with it
            text, base_facts = _baseline_sentence(base, methods, pairs)
            paragraphs.append(text)
            facts["versus_baselines"].append(base_facts)
    any_sig = any(p[HEADLINE]["significant"] for p in pairs if HEADLINE in p)
    zero = next((m["method"] for m in methods if m["base_as_is"]), None)  # zero_shot
    beats_zero = ([m["method"] for m in methods if not m["extractive"] and _better(versus(pairs, m["method"], zero))]
                  if zero else None)
    facts.update(any_significant=any_sig, beats_zero_shot=beats_zero, recommended=None)
    if demo:
        facts["verdict"] = "demo"
    elif len(methods) == 1:
        facts["verdict"] = "one_method"
        paragraphs.append(f"Only {methods[0]['method']} was evaluated: there is nothing to compare it with.")
    elif not any(versus(pairs, a["method"], b["method"]) for a in methods for b in methods if a is not b):
        facts["verdict"] = "untested"
        paragraphs.append("No paired test could be made (the evaluations lack per-document scores, or share no "
                          "document: re-run sumtune evaluate on the same data), so no winner is named.")
    elif beats_zero == []:
        facts["verdict"] = "none_beats_zero_shot"
        paragraphs.append(f"No trained method is significantly better than {zero}: the data do not show that "
                          "fine-tuning helps here, so no winner is named.")
    elif not any_sig:
        facts["verdict"] = "no_difference"
        paragraphs.append("No two methods differ significantly: the data cannot tell them apart, so no winner "
                          "is named.")
    else:
        rec = facts["recommended"] = _recommended(methods, pairs)
        facts["verdict"] = "recommended"
        beaten = [o["method"] for o in methods if _better(versus(pairs, rec, o["method"]))]
        paragraphs.append(f"For what it costs: {rec}, the cheapest method (by training time) that no other method "
                          "beats significantly" + (f"; it is significantly better than {', '.join(beaten)}."
                                                   if beaten else "."))
    return {"text": "\n\n".join(paragraphs), "paragraphs": paragraphs, "facts": facts}


def answer_markdown(ans: dict) -> str:
    return "## Answer: which method, for what it costs\n\n" + ans["text"] + "\n"
