"""Hyperparameters that are data: what a learner saves in a checkpoint, and how it is rebuilt from one.

A checkpoint never pickles a module, so it loads with PyTorch's safe ``weights_only`` loading (STYLE 15, Lightning's
own advice ``save_hyperparameters(ignore=["model"])``). A backbone that records its config
(:func:`~lightning_meta.models.records_config`) is saved as that config and rebuilt from it; any other module (a
user's ``nn.Sequential``) is left out, and :meth:`~lightning_meta.learners.MetaLearner.load_from_checkpoint` asks
for it by name. Only Lightning's public API is used.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

_PLAIN = (type(None), bool, int, float, str)


def class_name(cls: type) -> str:
    """``module.QualifiedName`` of a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


def is_plain(value: Any) -> bool:
    """Whether ``value`` is data that ``torch.load(weights_only=True)`` reads: numbers, strings, lists, dicts.

    Example:
        >>> is_plain({"a": [1, 2.0, "x", None]}), is_plain(torch.nn.Linear(1, 1))
        (True, False)
    """
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return False


def _config_of(value: Any) -> dict[str, Any] | None:
    """The ``class_path``/``init_args`` config a module records (``records_config``), or ``None``."""
    config = getattr(value, "init_config", None) if isinstance(value, nn.Module) else None
    return config if isinstance(config, dict) and is_plain(config) else None


def learner_hparams(cls: type, init_args: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters a learner of class ``cls`` saves, from the arguments its ``__init__`` received.

    Keeps the arguments of ``cls.__init__`` itself (all of them when it takes ``**kwargs``): plain values as they
    are, modules with a recorded config as that config; anything else (a module without a config, a function) is
    left out and must be passed again to ``load_from_checkpoint``.

    Example:
        >>> from lightning_meta import MAML, InnerLoop
        >>> from lightning_meta.models import MLP
        >>> hparams = learner_hparams(MAML, {"model": MLP(), "inner_loop": InnerLoop(lr=0.1), "unknown": 1})
        >>> hparams["model"]["class_path"], hparams["inner_loop"]["init_args"]["lr"], "unknown" in hparams
        ('lightning_meta.models.MLP', 0.1, False)
        >>> "model" in learner_hparams(MAML, {"model": torch.nn.Linear(1, 1), "lr": 0.1})
        False
    """
    own = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values()):
        init_args = {k: v for k, v in init_args.items() if k in own}
    # the class, as LightningCLI records it: `lightning-meta test --ckpt_path` then reads these as its init_args
    hparams: dict[str, Any] = {"_class_path": class_name(cls)}
    for name, value in init_args.items():
        config = _config_of(value)
        if config is not None:
            hparams[name] = config
        elif is_plain(value):
            hparams[name] = list(value) if isinstance(value, tuple) else value
    return hparams


def _is_config(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("class_path"), str)


def build_module(config: Mapping[str, Any]) -> nn.Module:
    """Build a module from its ``class_path``/``init_args`` config (nested configs first).

    Only a subclass of ``nn.Module`` whose module is already imported can be built: a checkpoint cannot make this
    import or run code of its choice.

    Raises:
        TypeError: the class is not an already imported ``nn.Module`` subclass.

    Example:
        >>> build_module({"class_path": "lightning_meta.models.MLP", "init_args": {"hidden": [8]}}).body[0]
        Linear(in_features=1, out_features=8, bias=True)
    """
    path = config["class_path"]
    module_name, _, attr = path.rpartition(".")
    module = sys.modules.get(module_name)
    if module is None and module_name.split(".")[0] == "lightning_meta":  # this package's own modules: safe to import
        module = importlib.import_module(module_name)
    cls = getattr(module, attr, None) if module is not None else None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(
            f"The checkpoint names the backbone class {path!r}, which is not an already imported torch.nn.Module "
            f"subclass; import the module that defines it before loading (import {module_name}), or pass the "
            "backbone itself to load_from_checkpoint."
        )
    init_args = {k: build_module(v) if _is_config(v) else v for k, v in dict(config.get("init_args") or {}).items()}
    return cls(**init_args)


def check_checkpoint_class(cls: type, saved: str | None, where: str) -> None:
    """Raise ``TypeError`` when a checkpoint written by another learner class is loaded into ``cls``.

    A checkpoint of ``cls`` itself or of one of its base classes is accepted (a subclass may load its parent's).
    """
    if saved is None or saved in {class_name(c) for c in cls.__mro__}:
        return
    short = saved.rsplit(".", 1)[-1]
    raise TypeError(
        f"{where} holds a {short} learner ({saved}), not a {cls.__name__}: load it with "
        f"{short}.load_from_checkpoint(...) (from {saved.rsplit('.', 1)[0]} import {short})."
    )


def _peek(checkpoint_path: Any) -> dict[str, Any] | None:
    """The checkpoint's dictionary read safely and lazily (``mmap``), or ``None`` if it cannot be read that way."""
    if not isinstance(checkpoint_path, (str, os.PathLike)) or "://" in str(checkpoint_path):
        return None
    if not Path(checkpoint_path).is_file():
        return None
    try:
        return torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)  # type: ignore[no-any-return]
    except Exception:  # an older checkpoint with a pickled module: Lightning's own loading decides
        return None


#: The inner-loop keywords of the learners before :class:`~lightning_meta.InnerLoop`, and their InnerLoop names.
LEGACY_INNER_LOOP = {
    "inner_lr": "lr",
    "inner_steps": "steps",
    "eval_inner_steps": "eval_steps",
    "first_order": "first_order",
    "strategy": "vectorize",
    "inner_precision": "precision",
    "compile_inner_loop": "compiled",
    "inner_optimizer": "optimizer",
}


def legacy_inner_loop(legacy: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`~lightning_meta.InnerLoop` config equal to a learner's former inner-loop keywords.

    Example:
        >>> legacy_inner_loop({"inner_lr": 0.4, "inner_steps": 1, "strategy": "loop"})["init_args"]
        {'lr': 0.4, 'steps': 1, 'vectorize': 'loop'}
    """
    init_args = {LEGACY_INNER_LOOP[k]: v for k, v in legacy.items() if k in LEGACY_INNER_LOOP and v is not None}
    return {"class_path": "lightning_meta.inner_loop.InnerLoop", "init_args": init_args}


def rebuild_arguments(cls: type, checkpoint_path: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments for Lightning's ``load_from_checkpoint``: ``kwargs`` plus the backbones built from configs.

    Raises:
        TypeError: the checkpoint holds another learner class, or a required argument of ``cls`` was not saved
            (a plain module) and is not in ``kwargs``; the message says what to pass.
    """
    checkpoint = _peek(checkpoint_path)
    if checkpoint is None:
        return kwargs
    check_checkpoint_class(cls, checkpoint.get("learner_class"), f"Checkpoint {checkpoint_path}")
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    hparams.pop("_class_path", None)
    kwargs = dict(kwargs)
    signature = inspect.signature(cls.__init__)  # type: ignore[misc]
    legacy = {k: hparams.pop(k) for k in list(hparams) if k in LEGACY_INNER_LOOP and k not in signature.parameters}
    if legacy and "inner_loop" in signature.parameters and "inner_loop" not in hparams and "inner_loop" not in kwargs:
        hparams["inner_loop"] = legacy_inner_loop(legacy)
        warnings.warn(
            f"Checkpoint {checkpoint_path} was written before the inner-loop settings became one InnerLoop: "
            f"{sorted(legacy)} were read as {hparams['inner_loop']['init_args']}. Saving it again writes the new form.",
            DeprecationWarning,
            stacklevel=3,
        )
    for name, value in hparams.items():
        if name not in kwargs and _is_config(value):
            kwargs[name] = build_module(value)
    missing = [
        name
        for name, p in signature.parameters.items()
        if name != "self"
        and p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and name not in hparams
        and name not in kwargs
    ]
    if missing:
        example = ", ".join(f"{name}=..." for name in missing)
        raise TypeError(
            f"{cls.__name__}.load_from_checkpoint: checkpoint {checkpoint_path} does not hold {missing}: a module "
            "without a recorded config (such as a plain nn.Sequential or your own network) is never pickled into a "
            f"checkpoint. Build it again as you did for training and pass it: "
            f"{cls.__name__}.load_from_checkpoint(path, {example}). (Backbones of lightning_meta.models, or your "
            "own class decorated with lightning_meta.models.records_config, are saved as a config and rebuilt.)"
        )
    return kwargs


__all__ = [
    "LEGACY_INNER_LOOP",
    "build_module",
    "check_checkpoint_class",
    "class_name",
    "is_plain",
    "learner_hparams",
    "legacy_inner_loop",
    "rebuild_arguments",
]
