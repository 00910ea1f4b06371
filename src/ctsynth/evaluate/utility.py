"""Usefulness: does synthetic data train a classifier that works on real patients?

A small MONAI ``DenseNet`` (three dense blocks of two layers, 8 initial features, growth 8, global average
pooling; about 20k weights, seconds per hundred steps on a CPU) is trained on
thumbnails (lung window -1000..-200 HU -> [-1, 1], so lesions have contrast; random flips in z and x,
:mod:`.small_net`) to tell the two classes apart, three times:
on (a) real training volumes, (b) synthetic volumes only ("train on synthetic, test on real", TSTR),
(c) real + synthetic; each is tested on the held-out real volumes. AUC is MONAI's ``compute_roc_auc``
with a seeded percentile bootstrap interval over the held-out volumes. Class consistency is the accuracy
of the real-trained classifier (threshold 0.5) on the labelled synthetic volumes: does a "covid" sample
look like covid to a model that learnt from real scans?
"""

from __future__ import annotations

import numpy as np

from ..preprocess.window import normalise
from .small_net import CLASSIFIER_FLIPS, train_small_net

CLASSIFIER_WINDOW = (-1000.0, -200.0)  # lung window: lesions are what separates the classes


def _tensor(thumbs: np.ndarray):
    import torch

    return torch.from_numpy(normalise(thumbs, CLASSIFIER_WINDOW))[:, None]


def positive_class(labels: list[str]) -> str:
    return "covid" if "covid" in labels else sorted(labels)[-1]


def train_classifier(thumbs: np.ndarray, y: np.ndarray, *, steps: int = 300, batch: int = 8, seed: int = 0,
                     lr: float = 1e-3):
    import torch
    from monai.networks.nets import DenseNet

    # Global average pooling before the last layer: the net measures how much lesion-like texture there is,
    # not where, which is what generalises from a few dozen training volumes.
    def build():
        return DenseNet(spatial_dims=3, in_channels=1, out_channels=1, init_features=8, growth_rate=8,
                        block_config=(2, 2, 2), bn_size=2)

    target = torch.from_numpy(np.asarray(y, dtype=np.float32))

    def bce(net, x, idx, gen):
        return torch.nn.functional.binary_cross_entropy_with_logits(net(x)[:, 0], target[idx])

    return train_small_net(build, _tensor(thumbs), bce, steps=steps, batch=batch, seed=seed, lr=lr,
                           flips=CLASSIFIER_FLIPS)


def predict(net, thumbs: np.ndarray, batch: int = 32) -> np.ndarray:
    import torch

    data = _tensor(thumbs)
    with torch.no_grad():
        out = [torch.sigmoid(net(data[s:s + batch])[:, 0]).numpy() for s in range(0, len(data), batch)]
    return np.concatenate(out).astype(np.float64)


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    import torch
    from monai.metrics import compute_roc_auc

    return float(compute_roc_auc(torch.from_numpy(np.asarray(p, np.float64)), torch.from_numpy(np.asarray(y, np.int64))))


def bootstrap_auc(y: np.ndarray, p: np.ndarray, *, n: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(AUC, 2.5th, 97.5th percentile) over ``n`` seeded resamples of the test set (single-class draws skipped)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].min() != y[idx].max():
            values.append(roc_auc_score(y[idx], p[idx]))
    auc = roc_auc(y, p)
    if not values:
        return auc, float("nan"), float("nan")
    return auc, float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def usefulness(real_thumbs: np.ndarray, real_labels: list[str], test_thumbs: np.ndarray, test_labels: list[str],
               synth_thumbs: np.ndarray, synth_labels: list[str], *, steps: int = 300, seed: int = 0,
               bootstrap: int = 1000) -> dict:
    """The TRTR / TSTR / TRSTR AUCs and class consistency (see the module docstring).

    Labels must be two classes; synthetic volumes with another label are left out (counted in the result).
    """
    classes = sorted(set(real_labels))
    if len(classes) != 2 or len(set(test_labels)) != 2:
        return {"available": False, "reason": f"needs two classes in real train and held-out, got "
                                              f"{sorted(set(real_labels))} / {sorted(set(test_labels))}"}
    pos = positive_class(classes)
    to01 = lambda labels: np.asarray([int(label == pos) for label in labels])  # noqa: E731
    keep = np.asarray([label in classes for label in synth_labels], dtype=bool)
    s_thumbs, s_y = synth_thumbs[keep], to01([l for l, k in zip(synth_labels, keep) if k])
    y_test = to01(test_labels)
    out: dict = {"available": True, "positive_class": pos, "classes": classes, "n_test": int(len(y_test)),
                 "n_synthetic_used": int(keep.sum()), "n_synthetic_unlabelled": int((~keep).sum())}
    real_net = train_classifier(real_thumbs, to01(real_labels), steps=steps, seed=seed)
    runs = {"real": real_net}
    if len(set(s_y.tolist())) == 2:
        runs["synthetic"] = train_classifier(s_thumbs, s_y, steps=steps, seed=seed)
        runs["real_plus_synthetic"] = train_classifier(np.concatenate([real_thumbs, s_thumbs]),
                                                       np.concatenate([to01(real_labels), s_y]), steps=steps, seed=seed)
    else:
        out["reason_synthetic"] = "synthetic set lacks labelled volumes of both classes"
    for name, net in runs.items():
        auc, lo, hi = bootstrap_auc(y_test, predict(net, test_thumbs), n=bootstrap, seed=seed)
        out[f"auc_{name}"] = {"auc": auc, "ci95": [lo, hi]}
    if len(s_y):
        pred = predict(real_net, s_thumbs) >= 0.5
        out["class_consistency"] = float(np.mean(pred == s_y.astype(bool)))
        out["real_accuracy_held_out"] = float(np.mean((predict(real_net, test_thumbs) >= 0.5) == y_test.astype(bool)))
    return out
