"""LightGBM for the snippet classifier: parameters, binary and multi-class boosters, the data-parallel network."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from sepcore.classify.config import DEFAULT_LGB_PARAMS, lgb_params  # noqa: F401 (the lightgbm API in one place)
from sepcore.classify.snippets import ClassifyError

log = logging.getLogger("sep.classify")

def train_binary(x: np.ndarray, y: np.ndarray, params: Mapping[str, Any], rounds: int = 300,
                 x_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
                 early_stopping: int | None = 30, feature_names: Sequence[str] | None = None,
                 check: bool = True) -> Any:  # fmt: skip
    """One LightGBM binary booster; early stopping on the validation metric (``params["metric"]``,
    default log loss) when both labels occur there.

    Shape: ``x`` ``(rows, features)``, ``y`` ``(rows,)``. With ``check`` raises
    ValueError unless both labels occur in ``y`` (data-parallel workers skip the check:
    their share may hold one label while the whole does not). Returns a
    ``lightgbm.Booster`` cut to its best iteration.
    """
    import lightgbm as lgb

    y = np.asarray(y).astype(np.float32)
    if check and (not len(y) or y.min() == y.max()):
        raise ValueError(f"training labels are all {int(y[0]) if len(y) else '-'}: nothing to learn")
    names: list[str] | Literal["auto"] = list(feature_names) if feature_names is not None else "auto"
    train_set = lgb.Dataset(x, label=y, feature_name=names, free_raw_data=True)
    callbacks: list[Callable[..., Any]] = []
    valid = []
    if x_val is not None and y_val is not None and len(np.unique(y_val)) == 2:
        valid = [lgb.Dataset(x_val, label=np.asarray(y_val, np.float32), reference=train_set)]
        if early_stopping:
            callbacks.append(lgb.early_stopping(early_stopping, verbose=False))
    booster = lgb.train(dict(params), train_set, num_boost_round=rounds, valid_sets=valid, callbacks=callbacks)
    if booster.best_iteration and booster.best_iteration < booster.current_iteration():
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
    return booster


def train_multiclass(x: np.ndarray, y: np.ndarray, params: Mapping[str, Any], num_class: int, rounds: int = 300,
                     x_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
                     early_stopping: int | None = 30, feature_names: Sequence[str] | None = None,
                     check: bool = True) -> Any:  # fmt: skip
    """One LightGBM multi-class booster (objective ``multiclass``, ``num_class`` classes); early
    stopping on the validation multi-class log loss when a validation set is given.

    Shape: ``x`` ``(rows, features)``, ``y`` ``(rows,)`` class indices in ``[0, num_class)``.
    With ``check`` raises ValueError unless ``y`` holds at least two classes. Returns a
    ``lightgbm.Booster`` cut to its best iteration (``predict`` gives ``(rows, num_class)``).
    """
    import lightgbm as lgb

    y = np.asarray(y).astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= num_class):
        raise ValueError(f"class indices must lie in [0, {num_class}), got {y.min()}..{y.max()}")
    if check and len(np.unique(y)) < 2:
        raise ValueError(f"training labels hold {len(np.unique(y))} class(es): nothing to learn")
    params = {**params, "objective": "multiclass", "num_class": num_class}
    params.setdefault("metric", "multi_logloss")
    if params["metric"] == "binary_logloss":  # the presence default
        params["metric"] = "multi_logloss"
    names: list[str] | Literal["auto"] = list(feature_names) if feature_names is not None else "auto"
    train_set = lgb.Dataset(x, label=y, feature_name=names, free_raw_data=True)
    callbacks: list[Callable[..., Any]] = []
    valid = []
    if x_val is not None and y_val is not None and len(y_val):
        valid = [lgb.Dataset(x_val, label=np.asarray(y_val, np.int64), reference=train_set)]
        if early_stopping:
            callbacks.append(lgb.early_stopping(early_stopping, verbose=False))
    booster = lgb.train(params, train_set, num_boost_round=rounds, valid_sets=valid, callbacks=callbacks)
    if booster.best_iteration and booster.best_iteration < booster.current_iteration():
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
    return booster


@contextlib.contextmanager
def lgb_network(machines: str, local_listen_port: int, num_machines: int,
                time_out: int = 120) -> Iterator[dict[str, Any]]:  # fmt: skip
    """LightGBM's data-parallel network, set up once for several boosters in this thread.

    ``lgb.train`` with ``machines`` among its parameters sets the network up and frees it
    with each booster, and the next booster then fails to bind the same port again
    (measured with two Ray Train workers). Here the network is set up once, as
    ``Booster.set_network`` does, and freed on exit; the parameters yielded (data
    parallel, pre-partitioned, ``num_machines``) go into every ``lgb.train`` inside.
    """
    import ctypes

    from lightgbm.basic import _LIB, _c_str, _safe_call

    _safe_call(_LIB.LGBM_NetworkInit(_c_str(machines), ctypes.c_int(local_listen_port),
                                     ctypes.c_int(time_out), ctypes.c_int(num_machines)))  # fmt: skip
    try:
        yield {"tree_learner": "data_parallel", "pre_partition": True, "num_machines": num_machines}
    finally:
        _safe_call(_LIB.LGBM_NetworkFree())


def load_booster(text: str, uri: str) -> Any:
    import lightgbm as lgb

    try:
        return lgb.Booster(model_str=text)
    except Exception as exc:  # LightGBMError: malformed model text
        raise ClassifyError(uri, f"not a LightGBM model ({exc})") from exc


def stack_rows(batches: Iterable[Mapping[str, np.ndarray]], features: Sequence[str],
               classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Features and labels of snippet batches, in (track, start) order.

    Ray Data's reading order varies between runs and LightGBM's result depends on the
    row order. Shape: -> ``(rows, features)`` float32, ``(rows, classes)``.
    """
    xs, ys, keys = [], [], []
    for b in batches:
        xs.append(np.stack([b[n] for n in features], axis=1).astype(np.float32))
        ys.append(np.stack([b[f"label_{c}"] for c in classes], axis=1))
        keys += list(zip(b["track_id"].tolist(), b["start_s"].tolist(), strict=True))
    if not xs:
        return np.zeros((0, len(features)), np.float32), np.zeros((0, len(classes)), np.uint8)
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return np.concatenate(xs)[order], np.concatenate(ys)[order]


def stack_style_rows(batches: Iterable[Mapping[str, np.ndarray]], features: Sequence[str],
                     styles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Features and style indices (into ``styles``) of style-mode snippet batches, in (track, start) order.

    Shape: -> ``(rows, features)`` float32, ``(rows,)`` int64. Raises ValueError naming a
    style that is not among ``styles``.
    """
    index = {s: i for i, s in enumerate(styles)}
    xs, ys, keys = [], [], []
    for b in batches:
        xs.append(np.stack([b[n] for n in features], axis=1).astype(np.float32))
        unknown = sorted(set(b["style"].tolist()) - set(index))
        if unknown:
            raise ValueError(f"snippets of style(s) {unknown} outside the classes {list(styles)}")
        ys.append(np.array([index[s] for s in b["style"].tolist()], dtype=np.int64))
        keys += list(zip(b["track_id"].tolist(), b["start_s"].tolist(), strict=True))
    if not xs:
        return np.zeros((0, len(features)), np.float32), np.zeros(0, np.int64)
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return np.concatenate(xs)[order], np.concatenate(ys)[order]


#: The name of the one booster of style mode (``style.txt`` beside ``classifier.json``).
STYLE_MODEL = "style"


def fit_styles(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, params: Mapping[str, Any],
               config: Mapping[str, Any], rank: int = 0, world: int = 1) -> dict[str, Any]:  # fmt: skip
    """Style mode: one multi-class booster over ``config["classes"]`` (:func:`train_multiclass`).

    Returns what :func:`fit_classes` returns, with the one model under :data:`STYLE_MODEL`.
    """
    t0 = time.monotonic()
    booster = train_multiclass(x, y, params, len(config["classes"]), config["rounds"], xv, yv,
                               config["early_stopping"], config["features"], check=world == 1)  # fmt: skip
    facts = {"iterations": booster.current_iteration(), "seconds": round(time.monotonic() - t0, 2)}
    log.info("classify: worker %d trained the style model (%d iterations)", rank, facts["iterations"])
    return {"texts": {STYLE_MODEL: booster.model_to_string()}, "classes": {STYLE_MODEL: facts},
            "workers": world, "train_rows_rank0": len(x)}  # fmt: skip


def fit_classes(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, params: Mapping[str, Any],
                config: Mapping[str, Any], rank: int = 0, world: int = 1) -> dict[str, Any]:  # fmt: skip
    """One booster per class of ``config["classes"]`` (:func:`train_binary`); model texts and facts.

    ``config``: ``classes``, ``features``, ``rounds``, ``early_stopping``. Returns
    ``{"texts": {class: model text}, "classes": {class: {"iterations", "seconds"}},
    "workers", "train_rows_rank0"}``.
    """
    texts, facts = {}, {}
    for i, c in enumerate(config["classes"]):
        t0 = time.monotonic()
        booster = train_binary(x, y[:, i], params, config["rounds"], xv, yv[:, i], config["early_stopping"],
                               config["features"], check=world == 1)  # fmt: skip
        texts[c] = booster.model_to_string()
        facts[c] = {"iterations": booster.current_iteration(), "seconds": round(time.monotonic() - t0, 2)}
        log.info("classify: worker %d trained %s (%d iterations)", rank, c, facts[c]["iterations"])
    return {"texts": texts, "classes": facts, "workers": world, "train_rows_rank0": len(x)}


def save_models(info: Mapping[str, Any], folder: str) -> None:
    """``<class>.txt`` per model text of :func:`fit_classes`'s ``info`` and ``training.json`` (the rest)."""
    for c, text in info["texts"].items():
        with open(f"{folder}/{c}.txt", "w") as fh:
            fh.write(text)
    with open(f"{folder}/training.json", "w") as fh:
        json.dump({k: v for k, v in info.items() if k != "texts"}, fh)


def load_models(folder: str, classes: Sequence[str]) -> tuple[dict[str, str], dict[str, Any]]:
    """What :func:`save_models` wrote: model text per class, and the training facts."""
    texts = {}
    for c in classes:
        with open(f"{folder}/{c}.txt") as fh:
            texts[c] = fh.read()
    with open(f"{folder}/training.json") as fh:
        return texts, json.load(fh)
