"""What the command line's flags take: each an argparse type, so that a bad value is a one-line
error naming the flag (`cli._Parser`)."""

from __future__ import annotations

import argparse

from sumtune.config import DECODING_PRESETS, METHODS


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def budget_value(text: str) -> float:
    v = number(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return v


def lr_choice(text: str) -> float | dict[str, float]:
    """experiment --lr: one rate for every method, or per method as lora=1e-4,prompt_tuning=0.1."""
    if "=" not in text:
        return number(text)
    rates = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name.strip() not in METHODS:
            raise argparse.ArgumentTypeError(f"unknown method {name.strip()!r} in {text!r} (methods: {', '.join(METHODS)})")
        rates[name.strip()] = number(value)
    return rates


def methods_choice(text: str) -> tuple[str, ...]:
    """experiment --methods: a comma-separated list of method names."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method {unknown[0]!r} in {text!r} (methods: {', '.join(METHODS)})"
                                         if unknown else "expected method names, e.g. lora,ia3")
    return names


def presets_choice(text: str) -> tuple[str, ...]:
    """experiment --choose-decoding: comma-separated decoding presets."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in DECODING_PRESETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown decoding preset {unknown[0]!r} in {text!r} (presets: "
                                         f"{', '.join(DECODING_PRESETS)})" if unknown else "expected preset names")
    return names
