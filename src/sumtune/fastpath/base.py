"""The fast paths as objects that say when they apply, apply themselves and undo exactly that.

A fast path (`FastPath`) has a `name` (what `train.fast_paths` lists and results.json records),
`applies_to(model, ctx)`, `apply(model, ctx)` and `revert(model)`. `apply` changes the model only
through the recording helpers below (a class, an attribute, a submodule, a parameter, a
requires_grad flag), each of which keeps what it replaced in the path's undo log; `revert` plays
the log backwards, so the model gets back the very objects it had: its classes, submodules,
Parameter objects (dtype, storage, tying) and config attributes. The undo log is held by the
path object, per model, in a `WeakKeyDictionary`; its entries hold the patched objects only
weakly, so a patched model is never kept alive by the registry.

Adding a fast path: a `FastPath` subclass beside the code it switches on (`apply` through the
helpers, `revert` inherited), one entry in `FAST_PATHS` (fastpath/__init__.py, where the order is explained) and its name in
`config.FAST_PATH_NAMES` (tests/test_fastpath.py checks that the two agree and that apply +
revert gives the untouched model back).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FastPathContext:
    """What a model is prepared for: `training` (else evaluation/decoding: nothing trains),
    `autocast` (the dtype the forward runs under, None: fp32), `attention` (`model.attention`:
    auto, sdpa or eager), `distributed` (several processes, DDP) and `compile` (`train.compile`)."""

    training: bool = True
    autocast: torch.dtype | None = None
    attention: str = "auto"
    distributed: bool = False
    compile: bool = False


def _ref(obj):
    """A weak reference where the object allows one (modules, tensors, configs), else the object."""
    try:
        return weakref.ref(obj)
    except TypeError:  # pragma: no cover - every patched object here is weak-referenceable
        return lambda: obj


class FastPath:
    """Base class: subclasses set `name` and `why`, and implement `applies_to` and `apply`."""

    name: str = ""
    why: str = ""  # logged when applied: what makes it apply and why it is faster

    def __init__(self) -> None:
        self._undo: weakref.WeakKeyDictionary[nn.Module, list[Callable[[], None]]] = weakref.WeakKeyDictionary()

    def applies_to(self, model: nn.Module, ctx: FastPathContext) -> bool:
        raise NotImplementedError

    def apply(self, model: nn.Module, ctx: FastPathContext) -> None:
        raise NotImplementedError

    def revert(self, model: nn.Module) -> None:
        """Undo what `apply` changed on `model`, last change first; then drop the path's caches."""
        for undo in reversed(self._undo.pop(model, [])):
            undo()
        self.drop_state(model)

    def drop_state(self, model: nn.Module) -> None:
        """Forget caches built while the path was in use (none by default)."""

    def is_applied(self, model: nn.Module) -> bool:
        return model in self._undo

    # ---- recording helpers: every change `apply` makes goes through one of these

    def _log(self, model: nn.Module, undo: Callable[[], None]) -> None:
        self._undo.setdefault(model, []).append(undo)

    def set_attr(self, model: nn.Module, obj, attr: str, value) -> None:
        """`obj.attr = value` (a submodule, a Parameter, a config attribute), undone by putting back
        the object that was there (or deleting the attribute if there was none)."""
        missing = object()
        old, target = getattr(obj, attr, missing), _ref(obj)

        def undo():
            o = target()
            if o is None:
                return
            if old is missing:
                delattr(o, attr)
            else:
                setattr(o, attr, old)

        self._log(model, undo)
        setattr(obj, attr, value)

    def set_class(self, model: nn.Module, module: nn.Module, cls: type) -> None:
        """Give `module` the class `cls` (same parameters and buffers, another forward)."""
        self.set_attr(model, module, "__class__", cls)

    def set_mixin(self, model: nn.Module, module: nn.Module, mixin: type) -> None:
        """Give `module` its class with `mixin`'s methods first (`with_mixin`)."""
        self.set_class(model, module, with_mixin(mixin, type(module)))

    def set_requires_grad(self, model: nn.Module, param: nn.Parameter, flag: bool) -> None:
        old, target = param.requires_grad, _ref(param)
        self._log(model, lambda: target() is not None and target().requires_grad_(old))
        param.requires_grad_(flag)

    def note(self, model: nn.Module) -> None:
        """Mark the path applied to `model` without changing it (paths that choose the training step)."""
        self._undo.setdefault(model, [])


class StepPath(FastPath):
    """A fast path of the training step (the loss, the optimizer): nothing on the model changes;
    `select_loss` and `fused_adamw` read the applied names."""

    def apply(self, model: nn.Module, ctx: FastPathContext) -> None:
        self.note(model)


_MIXED: dict[tuple[type, type], type] = {}


def with_mixin(mixin: type, cls: type) -> type:
    """`cls` with `mixin`'s methods first, one subclass per pair (`isinstance(m, cls)` still holds for a
    module given it): how a fast path swaps a Transformers module's forward without copying its weights."""
    if (mixin, cls) not in _MIXED:
        _MIXED[mixin, cls] = type(f"{cls.__name__}With{mixin.__name__}", (mixin, cls), {})
    return _MIXED[mixin, cls]
