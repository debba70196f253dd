"""nnU-Net split files (`splits_final.json`: a list of folds, each {"train": [...], "val": [...]})."""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List

import numpy as np

SPLIT_CHOICES = ("paper", "cv5")
NNUNET_SPLIT_SEED = 12345  # the seed nnU-Net's own generate_crossval_split uses


def one_fold(train: Iterable[str], val: Iterable[str]) -> List[Dict[str, List[str]]]:
    """The paper's fixed split as nnU-Net's fold 0."""
    train, val = sorted(train), sorted(val)
    overlap = set(train) & set(val)
    if overlap:
        raise ValueError(f"cases in both train and val: {sorted(overlap)}")
    return [{"train": train, "val": val}]


def grouped_kfold(cases: Iterable[str], group_of: Callable[[str], str], n_folds: int = 5,
                  seed: int = NNUNET_SPLIT_SEED) -> List[Dict[str, List[str]]]:
    """K folds in which all cases of a group (e.g. the ED and ES frames of one patient) share a fold.

    Groups are shuffled with numpy's RandomState(seed) and dealt round-robin: fold k validates groups k, k+n, ...
    """
    cases = sorted(cases)
    groups = sorted({group_of(c) for c in cases})
    if len(groups) < n_folds:
        raise ValueError(f"{len(groups)} groups cannot be split into {n_folds} folds")
    order = list(np.random.RandomState(seed).permutation(len(groups)))
    folds = []
    for k in range(n_folds):
        val_groups = {groups[i] for i in order[k::n_folds]}
        folds.append({"train": [c for c in cases if group_of(c) not in val_groups],
                      "val": [c for c in cases if group_of(c) in val_groups]})
    return folds
