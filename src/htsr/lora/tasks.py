"""The offline text classification tasks of the AlphaLoRA experiment, balanced over classes.

* ``kjv_genre`` (8 classes) and ``kjv_testament`` (2): King James verses
  (:func:`htsr.data.text.kjv_classification_split`).
* ``fortunes_topic`` (4 classes): quotations of the Debian ``fortunes`` corpus (:func:`htsr.data.corpora.fortunes`)
  labelled by their file, one of :data:`FORTUNE_TOPICS`, 20 to 400 characters long, exact duplicates dropped.

Each split holds a fixed test set (``split_seed``) and a training set drawn with ``seed`` from a pool twice its
size, so seeds differ in their training texts as well as in initialisation and order.
"""

from __future__ import annotations

import numpy as np

from htsr.errors import ConfigError
from htsr.lora.config import TASKS

FORTUNE_TOPICS = ("computers", "politics", "science", "work")

Split = tuple[list[str], np.ndarray, list[str], np.ndarray, tuple[str, ...]]


def fortunes_topic_split(n_train: int, n_test: int, seed: int = 0, *, split_seed: int = 0,
                         categories: tuple[str, ...] = FORTUNE_TOPICS) -> Split:
    """``(train_texts, train_labels, test_texts, test_labels, classes)`` from the fortunes corpus."""
    from htsr.data.corpora import fortunes

    df = fortunes(categories)
    n = df["text"].str.len()
    df = df[(n >= 20) & (n <= 400)].drop_duplicates("text", keep=False).reset_index(drop=True)
    classes = tuple(categories)
    per_train, per_test = n_train // len(classes), n_test // len(classes)
    if per_train < 1 or per_test < 1:
        raise ConfigError(f"n_train and n_test must be >= {len(classes)} (one per class), got {n_train}, {n_test}")
    rng = np.random.default_rng(split_seed)
    sub = np.random.default_rng([seed, 3])
    tr_t, tr_y, te_t, te_y = [], [], [], []
    for ci, c in enumerate(classes):
        idx = np.flatnonzero((df["category"] == c).to_numpy())
        need = 2 * per_train + per_test
        if idx.size < need:
            raise ConfigError(f"fortunes category {c!r} has {idx.size} usable quotations; {need} needed "
                              f"(2 x {per_train} pool + {per_test} test)")
        pick = rng.choice(idx, size=need, replace=False)
        test, pool = pick[:per_test], pick[per_test:]
        train = np.sort(sub.choice(pool, size=per_train, replace=False))
        tr_t += df["text"].iloc[train].tolist()
        tr_y += [ci] * per_train
        te_t += df["text"].iloc[np.sort(test)].tolist()
        te_y += [ci] * per_test
    return tr_t, np.array(tr_y, dtype=np.int64), te_t, np.array(te_y, dtype=np.int64), classes


def task_split(task: str, n_train: int, n_test: int, seed: int = 0, *, split_seed: int = 0) -> Split:
    """The split of one of :data:`~htsr.lora.config.TASKS`: about ``n_train`` training and ``n_test`` test texts
    (rounded down to a multiple of the number of classes)."""
    if task == "fortunes_topic":
        return fortunes_topic_split(n_train, n_test, seed, split_seed=split_seed)
    if task in ("kjv_genre", "kjv_testament"):
        from htsr.data.text import kjv_classification_split

        return kjv_classification_split(0.5, seed, label=task.split("_", 1)[1], n_pool=2 * n_train, n_test=n_test,
                                        split_seed=split_seed)
    raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
