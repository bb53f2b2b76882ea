"""A forest's trees packed into a few arrays in the model artifact.

skops stores each tree of a forest as its own objects and arrays (five per tree), and
reads them back one by one: a 600-tree forest (50 MB) took 2 s to load, most of it
skops's per-object work, which delays the first prediction after deploying. Packed,
the trees are one template estimator plus the nodes and values of all trees end to
end: one array each, read at numpy speed. The forest itself is unchanged;
`save_model` packs its `estimators_` and `load_model` unpacks them into a list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.tree._tree import Tree

TREE_STATE_KEYS = frozenset({"max_depth", "node_count", "nodes", "values"})
# scikit-learn's markers: a leaf has no children (-1) and no feature (-2).
TREE_LEAF, TREE_UNDEFINED = -1, -2


def packable(trees: Sequence) -> bool:
    """Trees of one fitted forest that `PackedTrees` restores exactly: one estimator
    type, one tree shape, integer seeds and no tree state this module does not know."""
    if not trees:
        return False
    first = trees[0]
    shape = _shape(first.tree_)
    return all(type(t) is type(first) and isinstance(getattr(t, "tree_", None), Tree)
               and _shape(t.tree_) == shape and isinstance(t.random_state, int)
               and set(t.tree_.__getstate__()) == TREE_STATE_KEYS for t in trees)


def _shape(tree: Tree) -> tuple:
    return tree.n_features, tuple(np.asarray(tree.n_classes).tolist()), tree.n_outputs


class PackedTrees(Sequence):
    """The fitted trees of a forest; pickled / persisted as a few arrays."""

    def __init__(self, trees: Sequence):
        self._trees = list(trees)

    def __len__(self) -> int:
        return len(self._trees)

    def __getitem__(self, index):
        return self._trees[index]

    def __getstate__(self) -> dict:
        first = self._trees[0]
        template = type(first).__new__(type(first))
        template.__dict__.update({**first.__dict__, "tree_": None, "random_state": None})
        states = [t.tree_.__getstate__() for t in self._trees]
        n_features, n_classes, n_outputs = _shape(first.tree_)
        return {"template": template, "n_features": n_features,
                "n_classes": np.asarray(n_classes, dtype=np.intp), "n_outputs": n_outputs,
                "random_states": np.array([t.random_state for t in self._trees], np.int64),
                "max_depths": np.array([s["max_depth"] for s in states], np.int64),
                "node_counts": np.array([s["node_count"] for s in states], np.int64),
                "nodes": np.concatenate([s["nodes"] for s in states]),
                "values": np.concatenate([s["values"] for s in states])}

    def __setstate__(self, state: dict) -> None:
        template = state["template"]
        _check_nodes(state)
        ends = np.cumsum(state["node_counts"])
        starts = ends - state["node_counts"]
        n_classes = np.asarray(state["n_classes"], dtype=np.intp)
        self._trees = []
        for seed, depth, count, start, end in zip(state["random_states"], state["max_depths"],
                                                  state["node_counts"], starts, ends):
            tree = Tree(int(state["n_features"]), n_classes, int(state["n_outputs"]))
            tree.__setstate__({"max_depth": int(depth), "node_count": int(count),
                               "nodes": state["nodes"][start:end],
                               "values": state["values"][start:end]})
            estimator = type(template).__new__(type(template))
            estimator.__dict__.update({**template.__dict__, "tree_": tree,
                                       "random_state": int(seed)})
            self._trees.append(estimator)


def _check_nodes(state: dict) -> None:
    """Every tree's nodes point at an existing feature and at children further on in
    the same tree (as scikit-learn builds them: so a walk ends at a leaf)."""
    counts, nodes = np.asarray(state["node_counts"]), state["nodes"]
    if ((counts < 1).any() or len(nodes) != counts.sum() or len(state["values"]) != len(nodes)
            or not len(counts) == len(state["random_states"]) == len(state["max_depths"])):
        raise ValueError("packed trees: the node counts do not match the arrays")
    own_count = np.repeat(counts, counts)
    position = np.arange(len(nodes)) - np.repeat(np.cumsum(counts) - counts, counts)
    for child in ("left_child", "right_child"):
        index = nodes[child]
        if not ((index == TREE_LEAF) | ((index > position) & (index < own_count))).all():
            raise ValueError(f"packed trees: a {child} index points outside its tree")
    feature = nodes["feature"]
    if not ((feature == TREE_UNDEFINED) | ((feature >= 0)
                                           & (feature < int(state["n_features"])))).all():
        raise ValueError("packed trees: a node splits on a feature the trees do not have")
