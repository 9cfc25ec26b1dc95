r"""Warm-start retraining: a retrain after new interactions starts from the previous training's parameters.

No Dagster here. After a BPR-trained model is trained, its trainable parameters (the nn.Module's parameters,
not the propagated embeddings the model asset stores), the settings its search chose and the raw user and item
ids its rows belong to are saved as one *checkpoint* (:func:`save_checkpoint`, atomically, under
``<home>/checkpoints/<dataset key>/<model>/checkpoint.pt``, one folder per dataset and seed). A later
retrain on grown data builds the model as usual and
then takes, row by row and keyed by the raw ids (indices change when data grows):

* a known user or item: its previous row;
* a new user: the mean of the warm rows of the items in its training history, in the table the user table is
  scored against (``user_embedding`` against ``item_embedding``, ...); a new item with training
  interactions: the mean of its users' rows; without a pairing or a history: the model's own initial row;
* every other parameter (the content tower, projections): the previous value where the shape is unchanged.

``init="default"`` keeps the model's own initial rows for every new user and item instead (the measurement in
docs/lifecycle.md compares the two). Training then runs as usual (BPR, early stopping on validation with the
patience), with the starting point validated first so a retrain can never end worse than where it started,
and without the settings search: the checkpoint's chosen settings are trained again.

A checkpoint is used only when it is *compatible* (:func:`compatible`): same model, same settings before the
search, every parameter's non-id shape unchanged, and most of the current users known to it.
Loading uses ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from mm_pipeline.storage import atomic_write_bytes

FORMAT = 1
FILE = "checkpoint.pt"
WARM_START_MODES = ("auto", "on", "off")
INITS = ("history", "default")
# Below this share of the current users known to the checkpoint, training from scratch is the better start.
MIN_KNOWN_USERS = 0.5
# Settings that say how or where to train, not what the model is: they may differ from the checkpoint's.
NOT_THE_MODEL = (
    "device",
    "epochs",
    "patience",
    "eval_every",
    "validation_users",
    "max_epoch_steps",
    "warm_start",
    "warm_init",
    "warm_epochs",
    "warm_rounds",
    "rounds",
    "budget_s",
)

# Which rows of a parameter belong to which ids, per model class: ``{parameter: (("user"|"item", offset), ...)}``,
# segments in row order; and which user table is scored against which item table (new rows start from them).
ID_ROWS: dict[str, dict[str, tuple[str, ...]]] = {
    "IDLightGCN": {"lightgcn.embedding.weight": ("user", "item")},
    "MultimodalGCN": {
        "user_embedding.weight": ("user",),
        "item_embedding.weight": ("item",),
        "user_content.weight": ("user",),
    },
    "VBPR": {
        "user_factors.weight": ("user",),
        "item_factors.weight": ("item",),
        "user_visual.weight": ("user",),
        "item_bias.weight": ("item",),
    },
    "FREEDOM": {"user_embedding.weight": ("user",), "item_embedding.weight": ("item",)},
}
PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "IDLightGCN": (("lightgcn.embedding.weight", "lightgcn.embedding.weight"),),
    "MultimodalGCN": (("user_embedding.weight", "item_embedding.weight"),),
    "VBPR": (("user_factors.weight", "item_factors.weight"),),
    "FREEDOM": (("user_embedding.weight", "item_embedding.weight"),),
}


@dataclass
class Checkpoint:
    """One trained model's parameters and the ids of their rows."""

    model: str  # the model table's name (``mm_gcn``)
    settings: dict[str, Any]  # the settings before the search (compatibility)
    chosen: dict[str, Any]  # the settings the search chose (what a warm retrain trains again)
    user_ids: list[str]
    item_ids: list[str]
    state: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)  # e.g. the validation score it reached

    def to_dict(self) -> dict:
        return {"format": FORMAT, **dataclasses.asdict(self)}


def parameters_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's trainable parameters, detached on the CPU (buffers such as the graph are rebuilt)."""
    return {name: p.detach().cpu().clone() for name, p in module.named_parameters()}


def save_checkpoint(folder: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` to ``folder/checkpoint.pt`` in one rename (a reader sees the old one or the new)."""
    buffer = io.BytesIO()
    torch.save(checkpoint.to_dict(), buffer)
    return atomic_write_bytes(Path(folder) / FILE, buffer.getvalue())


def load_checkpoint(folder: str | Path) -> Checkpoint | None:
    """The checkpoint in ``folder``, or None when there is none or it cannot be read as one."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 (a torn or foreign file: train from scratch)
        return None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        return None
    names = {f.name for f in dataclasses.fields(Checkpoint)}
    return Checkpoint(**{k: v for k, v in raw.items() if k in names})


def model_settings(config: Any) -> dict[str, Any]:
    """The settings that define the model (compared with a checkpoint's): the dataclass minus
    :data:`NOT_THE_MODEL`."""
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if k not in NOT_THE_MODEL}


def compatible(checkpoint: Checkpoint | None, model: str, settings: Any, user_ids: Sequence[str]) -> str | None:
    """Why ``checkpoint`` cannot warm-start ``model`` with ``settings`` on these users (None: it can)."""
    if checkpoint is None:
        return "no checkpoint"
    if checkpoint.model != model:
        return f"the checkpoint is of {checkpoint.model!r}"
    wanted = model_settings(settings)
    saved = {k: v for k, v in checkpoint.settings.items() if k not in NOT_THE_MODEL}
    changed = sorted(k for k in set(wanted) | set(saved) if wanted.get(k) != saved.get(k))
    if changed:
        return f"settings changed since the checkpoint: {', '.join(changed)}"
    known = len(set(map(str, user_ids)) & set(checkpoint.user_ids))
    if not user_ids or known < MIN_KNOWN_USERS * len(user_ids):
        return f"only {known} of {len(user_ids)} users are known to the checkpoint"
    return None


def same_shapes(checkpoint: Checkpoint, module: torch.nn.Module) -> str | None:
    """Why ``checkpoint``'s parameters cannot all be loaded into ``module`` (None: they can)."""
    mine = {name: tuple(p.shape) for name, p in module.named_parameters()}
    theirs = {name: tuple(t.shape) for name, t in checkpoint.state.items()}
    return None if mine == theirs else "the parameters' names or shapes changed since the checkpoint"


def _segments(module_name: str, name: str, n_users: int, n_items: int) -> list[tuple[str, int, int]]:
    """``[(kind, start, length)]`` of the id-keyed rows of parameter ``name`` (empty: not id-keyed)."""
    out, start = [], 0
    for kind in ID_ROWS.get(module_name, {}).get(name, ()):
        length = n_users if kind == "user" else n_items
        out.append((kind, start, length))
        start += length
    return out


def mapped_rows(old_ids: Sequence[str], new_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(new_rows, old_rows)``: for each id in both lists, its row in the new and in the old table."""
    old = pd.Index(np.asarray(old_ids, dtype=str))
    position = old.get_indexer(np.asarray(new_ids, dtype=str)) if len(old) else np.full(len(new_ids), -1)
    new_rows = np.flatnonzero(position >= 0).astype(np.int64)
    return new_rows, np.asarray(position, dtype=np.int64)[new_rows]


def _mean_of(table: torch.Tensor, links: sp.csr_matrix, rows: np.ndarray, known: np.ndarray) -> dict[int, torch.Tensor]:
    """For each of ``rows``: the mean of ``table``'s rows at its linked columns that are ``known``."""
    out = {}
    for r in rows:
        cols = links.indices[links.indptr[r] : links.indptr[r + 1]]
        cols = cols[known[cols]]
        if len(cols):
            out[int(r)] = table[torch.from_numpy(cols)].mean(0)
    return out


@dataclass
class WarmReport:
    """What :func:`warm_state` did, for the run's metadata."""

    users_known: int
    users_new: int
    items_known: int
    items_new: int
    new_rows_from_history: int
    parameters_copied: int
    parameters_fresh: int

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def warm_state(
    module: torch.nn.Module,
    checkpoint: Checkpoint,
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    train: sp.csr_matrix,
    init: str = "history",
) -> tuple[dict[str, torch.Tensor], WarmReport]:
    """The parameters of ``module`` (built for ``user_ids`` x ``item_ids``, freshly initialised) warm-started
    from ``checkpoint`` (see the module doc); ``train`` (users x items) is the history new rows start from.
    Returns the state to load with ``load_state_dict(state, strict=False)`` and what was done."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    module_name = type(module).__name__
    n_users, n_items = len(user_ids), len(item_ids)
    if train.shape != (n_users, n_items):
        raise ValueError(f"the training matrix is {train.shape}, the ids {n_users} x {n_items}")
    users_new, users_old = mapped_rows(checkpoint.user_ids, user_ids)
    items_new, items_old = mapped_rows(checkpoint.item_ids, item_ids)
    n_old_users, n_old_items = len(checkpoint.user_ids), len(checkpoint.item_ids)
    index = {"user": (users_new, users_old), "item": (items_new, items_old)}
    fresh = parameters_of(module)
    state: dict[str, torch.Tensor] = {}
    copied = kept = from_history = 0
    known_mask = {
        "user": np.isin(np.arange(n_users), users_new),
        "item": np.isin(np.arange(n_items), items_new),
    }
    for name, value in fresh.items():
        old = checkpoint.state.get(name)
        segments = _segments(module_name, name, n_users, n_items)
        if not segments:
            if old is not None and tuple(old.shape) == tuple(value.shape):
                state[name], copied = old.clone(), copied + 1
            else:
                state[name], kept = value, kept + 1
            continue
        old_segments = _segments(module_name, name, n_old_users, n_old_items)
        if old is None or tuple(old.shape[1:]) != tuple(value.shape[1:]):
            state[name], kept = value, kept + 1
            continue
        table = value.clone()
        for (kind, start, _), (_, old_start, _) in zip(segments, old_segments, strict=True):
            new_rows, old_rows = index[kind]
            table[torch.from_numpy(start + new_rows)] = old[torch.from_numpy(old_start + old_rows)]
        state[name], copied = table, copied + 1
    if init == "history":
        for user_table, item_table in PAIRS.get(module_name, ()):
            if user_table not in state or item_table not in state:
                continue
            (_, u0, _), *_ = [s for s in _segments(module_name, user_table, n_users, n_items) if s[0] == "user"]
            (_, i0, _), *_ = [s for s in _segments(module_name, item_table, n_users, n_items) if s[0] == "item"]
            users_table = state[user_table][u0 : u0 + n_users].clone()
            items_table = state[item_table][i0 : i0 + n_items].clone()
            new_users = np.flatnonzero(~known_mask["user"])
            new_items = np.flatnonzero(~known_mask["item"])
            csr, csc = train.tocsr(), train.T.tocsr()
            for row, mean in _mean_of(items_table, csr, new_users, known_mask["item"]).items():
                state[user_table][u0 + row] = mean
                from_history += 1
            for row, mean in _mean_of(users_table, csc, new_items, known_mask["user"]).items():
                state[item_table][i0 + row] = mean
                from_history += 1
    report = WarmReport(
        users_known=len(users_new),
        users_new=n_users - len(users_new),
        items_known=len(items_new),
        items_new=n_items - len(items_new),
        new_rows_from_history=from_history,
        parameters_copied=copied,
        parameters_fresh=kept,
    )
    return state, report


@dataclass
class WarmStart:
    """What a trainer needs to warm-start: the checkpoint, the current ids and how new rows start."""

    checkpoint: Checkpoint
    user_ids: Sequence[str]
    item_ids: Sequence[str]
    init: str = "history"
    report: WarmReport | None = None  # filled in by :meth:`apply`

    def apply(self, module: torch.nn.Module, train: sp.csr_matrix) -> None:
        """Load the warm-started parameters into ``module`` (built and initialised as usual)."""
        state, self.report = warm_state(module, self.checkpoint, self.user_ids, self.item_ids, train, self.init)
        missing = [name for name, _ in module.named_parameters() if name not in state]
        if missing:
            raise ValueError(f"warm start left parameters out: {missing}")
        module.load_state_dict(state, strict=False)

    def chosen(self, config: Any) -> Any:
        """``config`` with the checkpoint's chosen settings (the search is not run again)."""
        names = {f.name for f in dataclasses.fields(config)}
        changes = {
            k: (tuple(v) if isinstance(v, list) else v)
            for k, v in self.checkpoint.chosen.items()
            if k in names and k not in NOT_THE_MODEL and k != "seed"
        }
        return dataclasses.replace(config, **changes)


def as_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """Plain Python values (lists for tuples) for a checkpoint's settings."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
