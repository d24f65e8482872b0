"""Small exact integer operations shared by the golden model and the testbenches.

Every function here is the bit-exact reference of one hardware primitive.  They are
batched: they take NumPy arrays or PyTorch tensors (or plain ints) and return the same
kind, computing in 64-bit integers so that no intermediate result wraps.
"""

from __future__ import annotations

import sys

import numpy as np

__all__ = ["shift_pow2"]

# int64 holds |x| < 2**63; a shifted basis entry must stay well inside that.
_MAX_RESULT_BITS = 62


def _is_tensor(x) -> bool:
    # torch is only consulted when the caller already imported it, so the cocotb side
    # (which uses NumPy) does not pay the torch import at every simulator start.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def shift_pow2(value, sign, shift):
    """``(-1)**sign * value * 2**shift``, exactly: the power-of-two shifter.

    Parameters
    ----------
    value : int, numpy.ndarray or torch.Tensor
        Signed integer(s), e.g. basis entries.
    sign : int or array-like of {0, 1}
        1 negates the term.
    shift : int or array-like of int >= 0
        Left shift (exponent offset ``e - exp_min``).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``int64`` result, broadcast over the three inputs; a tensor when ``value`` is a
        tensor, otherwise a NumPy array.

    Raises
    ------
    ValueError
        If a sign is not 0/1, a shift is negative, or a result would not fit in 62 bits.
    """
    if _is_tensor(value):
        import torch
        v = value.to(torch.int64)
        s = torch.as_tensor(sign, dtype=torch.int64, device=v.device)
        k = torch.as_tensor(shift, dtype=torch.int64, device=v.device)
        _check(s.cpu().numpy(), k.cpu().numpy(), v.cpu().numpy())
        mag = torch.bitwise_left_shift(v, k)
        return torch.where(s.bool(), -mag, mag)
    v = np.asarray(value, dtype=np.int64)
    s = np.asarray(sign, dtype=np.int64)
    k = np.asarray(shift, dtype=np.int64)
    _check(s, k, v)
    mag = np.left_shift(v, k)
    return np.where(s.astype(bool), -mag, mag)


def _check(sign: np.ndarray, shift: np.ndarray, value: np.ndarray) -> None:
    if sign.size and not np.isin(sign, (0, 1)).all():
        raise ValueError(f"shift_pow2: sign must be 0 or 1, got {np.unique(sign).tolist()}")
    if shift.size and shift.min() < 0:
        raise ValueError(f"shift_pow2: shift must be >= 0, got {int(shift.min())}")
    if value.size and shift.size:
        bits = np.abs(value).max().item().bit_length() + int(shift.max())
        if bits > _MAX_RESULT_BITS:
            raise ValueError(f"shift_pow2: result needs {bits} bits, more than the "
                             f"{_MAX_RESULT_BITS} an int64 model holds exactly")
