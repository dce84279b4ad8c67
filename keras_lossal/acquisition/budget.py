"""What a budget-aware strategy measures: the labeled items, and the classes of the model.

`strategies.BudgetSwitch` picks with one strategy while labels are scarce and another once each class
has enough: small budgets favour typical, representative picks (TypiClust), larger ones uncertain and
diverse picks (BADGE, margin, the learning-loss selections; Hacohen, Dekel & Weinshall, ICML 2022).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from keras_lossal.contracts import DEFAULT_LABELS_PER_CLASS, labels_are_scarce
from keras_lossal.outputs import graph_model, has_graph

__all__ = ["DEFAULT_LABELS_PER_CLASS", "labeled_count", "labels_are_scarce", "model_classes"]


def model_classes(model) -> int:
    """How many classes the model's (backbone's) single output has; `ValueError` when it cannot be read."""
    graph = graph_model(model)
    classes = graph.outputs[0].shape[-1] if has_graph(graph) and len(graph.outputs) == 1 else None
    if not classes:
        raise ValueError(
            f"Expected a classifier whose single output has a known number of classes. Received: {model!r}; "
            "pass num_classes= to the budget switch"
        )
    return int(classes)


def labeled_count(labeled) -> int:
    """How many labeled items `labeled` holds: a NumPy array's rows, or the items of a sequence of batches.

    Example:

    >>> labeled_count(None), labeled_count(np.zeros((7, 3))), labeled_count([np.zeros((4, 3)), np.zeros((2, 3))])
    (0, 7, 6)
    """
    if labeled is None:
        return 0
    if isinstance(labeled, np.ndarray):
        return int(labeled.shape[0]) if labeled.ndim else 0
    if isinstance(labeled, Sequence) and iter(labeled) is not labeled:
        return int(sum(np.shape(batch[0] if isinstance(batch, (tuple, list)) else batch)[0] for batch in labeled))
    raise ValueError(
        "Expected labeled items a budget switch can count without consuming them: a NumPy array or a list of "
        f"batches. Received: {type(labeled).__name__}"
    )
