"""The bundled handwritten-digits data set (scikit-learn, 1797 8x8 images), split once.

`load_digits_split` returns a fixed, stratified 80/20 train/test split: the same seed
gives the same split on every machine (scikit-learn's ``train_test_split`` with a fixed
``random_state``), so accuracies in the docs, the checkpoint and the tests agree.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = ["DigitsSplit", "load_digits_split", "PIXEL_MAX"]

#: Largest pixel value of the digits images (4-bit grey levels 0..16).
PIXEL_MAX = 16.0


class DigitsSplit(NamedTuple):
    """Train/test tensors: images ``(N, 1, 8, 8)`` float32 in [0, 1], labels int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split(seed: int = 0, test_fraction: float = 0.2) -> DigitsSplit:
    """Load the digits and split them (stratified by class, deterministic in ``seed``).

    Parameters
    ----------
    seed : int
        ``random_state`` of the split.
    test_fraction : float
        Fraction of the 1797 images held out for testing (default 0.2 -> 360 images).

    Returns
    -------
    DigitsSplit
        Images are ``pixels / 16`` as float32 ``(N, 1, 8, 8)``; labels int64 ``(N,)``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    data = load_digits()
    x = (data.images.astype(np.float32) / PIXEL_MAX)[:, None, :, :]
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction,
                                              random_state=seed, stratify=y)
    return DigitsSplit(torch.from_numpy(np.ascontiguousarray(x_tr)), torch.from_numpy(y_tr),
                       torch.from_numpy(np.ascontiguousarray(x_te)), torch.from_numpy(y_te))
