"""The bundled network: a small CNN for the 8x8 scikit-learn digits, and its checkpoint.

`DigitsCNN` is the architecture the exporter, the integer reference and the demo walk
(through `DigitsCNN.layer_plan`); do not change it without changing them.

    input (N, 1, 8, 8), pixels / 16 in [0, 1]
    conv1  Conv2d(1, 16, 3, stride=1, padding=1) + ReLU   -> 16 x 8 x 8
    conv2  Conv2d(16, 32, 3, stride=2, padding=1) + ReLU  -> 32 x 4 x 4
    conv3  Conv2d(32, 32, 3, stride=2, padding=1) + ReLU  -> 32 x 2 x 2
    flatten in (c, h, w) order                            -> 128
    fc     Linear(128, 10), no ReLU                       -> 10 logits

Checkpoint format (``torch.save`` of a dict, loadable with ``weights_only=True``)::

    {"format": "smartdeal-sd-checkpoint", "version": 1, "arch": "DigitsCNN",
     "config": SDConfig.to_dict(), "state_dict": model.state_dict(),
     "metrics": {...}, "options": {"sd_layers": [names of SD layers], ...}}
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from golden.layers import SDConv2d, SDLinear, sd_layers
from hw.config import SDConfig, load_config

__all__ = ["DigitsCNN", "ARCHS", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION",
           "DEFAULT_CHECKPOINT", "DENSE_CHECKPOINT", "DENSE_FORMAT", "save_checkpoint",
           "load_checkpoint", "save_dense_checkpoint", "load_dense_checkpoint", "sd_shell"]

CHECKPOINT_FORMAT = "smartdeal-sd-checkpoint"
DENSE_FORMAT = "smartdeal-dense-checkpoint"
CHECKPOINT_VERSION = 1
#: The trained SD checkpoint shipped with the package (default preset).
DEFAULT_CHECKPOINT = Path(__file__).with_name("checkpoints") / "digits_sd.pt"
#: The dense fp32 model it was converted from (for sweeps and equivalence tests).
DENSE_CHECKPOINT = Path(__file__).with_name("checkpoints") / "digits_dense.pt"


class DigitsCNN(nn.Module):
    """Three 3x3 convolutions and a linear classifier for 8x8 digit images."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(128, 10)

    def layer_plan(self) -> list[tuple[str, nn.Module, bool]]:
        """``(name, module, relu)`` of every weight layer in execution order.

        ``module`` is `nn.Conv2d`/`nn.Linear` or `SDConv2d`/`SDLinear` (same
        ``.stride``/``.padding``/``.bias``); between the last convolution and ``fc``
        the activation is flattened in ``(c, h, w)`` order.
        """
        return [("conv1", self.conv1, True), ("conv2", self.conv2, True),
                ("conv3", self.conv3, True), ("fc", self.fc, False)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"DigitsCNN expects input of shape (N, 1, 8, 8), "
                             f"got {tuple(x.shape)}")
        for _, layer, relu in self.layer_plan():
            if isinstance(layer, (nn.Linear, SDLinear)):
                x = x.flatten(1)
            x = layer(x)
            if relu:
                x = F.relu(x)
        return x


ARCHS: dict[str, type[nn.Module]] = {"DigitsCNN": DigitsCNN}


def sd_shell(model: nn.Module, names, config: "SDConfig | str | None") -> nn.Module:
    """Replace the named dense layers by empty SD layers of the same geometry (in place).

    Used to rebuild a model before ``load_state_dict`` of an SD checkpoint.
    """
    cfg = load_config(config)
    for name in names:
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"checkpoint names SD layer {name!r}, which "
                             f"{type(model).__name__} does not have") from None
        if isinstance(mod, nn.Conv2d):
            new = SDConv2d(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride,
                           mod.padding, mod.dilation, 1, mod.bias is not None, "zeros", cfg,
                           init=False)
        elif isinstance(mod, nn.Linear):
            new = SDLinear(mod.in_features, mod.out_features, mod.bias is not None, cfg,
                           init=False)
        else:
            raise ValueError(f"layer {name!r} is a {type(mod).__name__}, which has no SD form")
        new._sd_name = name
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    return model


def save_checkpoint(path: "str | Path", model: nn.Module, config: SDConfig, *,
                    metrics: dict | None = None, options: dict | None = None,
                    arch: str = "DigitsCNN") -> Path:
    """Write an SD checkpoint (format in the module docstring); returns the path."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHS)}")
    opts = dict(options or {})
    opts["sd_layers"] = [n for n, _ in sd_layers(model)]
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    blob = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "config": config.to_dict(), "arch": arch, "state_dict": state,
            "metrics": dict(metrics or {}), "options": opts}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)
    return path


def _require(cond: bool, path, what: str, fmt: str = CHECKPOINT_FORMAT) -> None:
    if not cond:
        raise ValueError(f"{path}: not a valid {fmt} file: {what}")


def _read(path: Path, fmt: str) -> dict:
    """torch.load a checkpoint dict and check its format/version/arch/state_dict."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # pickle, zip and torch errors all mean "not a checkpoint"
        raise ValueError(f"{path}: not a {fmt} file (cannot be read by "
                         f"torch.load: {type(exc).__name__}: {exc})") from None
    _require(isinstance(blob, dict), path, f"top level is {type(blob).__name__}, not a dict",
             fmt)
    _require(blob.get("format") == fmt, path, f"format field is {blob.get('format')!r}", fmt)
    _require(blob.get("version") == CHECKPOINT_VERSION, path,
             f"version {blob.get('version')!r} is not supported (expected "
             f"{CHECKPOINT_VERSION})", fmt)
    _require(blob.get("arch") in ARCHS, path,
             f"unknown arch {blob.get('arch')!r} (known: {sorted(ARCHS)})", fmt)
    state = blob.get("state_dict")
    _require(isinstance(state, dict) and all(isinstance(v, torch.Tensor)
                                             for v in state.values()),
             path, "state_dict is not a dict of tensors", fmt)
    return blob


def save_dense_checkpoint(path: "str | Path", model: nn.Module, *,
                          metrics: dict | None = None, arch: str = "DigitsCNN") -> Path:
    """Write a dense (fp32) checkpoint: like the SD one, without ``config``."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHS)}")
    blob = {"format": DENSE_FORMAT, "version": CHECKPOINT_VERSION, "arch": arch,
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "metrics": dict(metrics or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)
    return path


def load_dense_checkpoint(path: "str | Path | None" = None) -> tuple[nn.Module, dict]:
    """Load a dense checkpoint (default: the shipped `DENSE_CHECKPOINT`).

    Returns ``(model, metrics)``; raises like `load_checkpoint`.
    """
    path = Path(DENSE_CHECKPOINT if path is None else path)
    blob = _read(path, DENSE_FORMAT)
    model = ARCHS[blob["arch"]]()
    try:
        model.load_state_dict(blob["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: state_dict does not fit {blob['arch']}: {exc}") from None
    model.eval()
    return model, blob.get("metrics", {})


def load_checkpoint(path: "str | Path | None" = None, *, with_info: bool = False):
    """Load an SD checkpoint; returns ``(model, config)`` (``+ (info,)`` if ``with_info``).

    Parameters
    ----------
    path : str or Path or None
        Checkpoint file; None loads the shipped `DEFAULT_CHECKPOINT`.
    with_info : bool
        Also return the dict with ``metrics`` and ``options``.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is not a SmartDeal SD checkpoint (unreadable, wrong ``format`` or
        ``version``, unknown ``arch``, invalid ``config``, state dict that does not fit
        the architecture, or coefficient codes outside the configured range).
    """
    path = Path(DEFAULT_CHECKPOINT if path is None else path)
    blob = _read(path, CHECKPOINT_FORMAT)
    arch = blob["arch"]
    try:
        config = SDConfig.from_dict(blob.get("config"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid configuration in checkpoint: {exc}") from None
    state = blob["state_dict"]
    options = blob.get("options") or {}
    _require(isinstance(options, dict) and isinstance(options.get("sd_layers", []), list),
             path, "options.sd_layers is not a list")
    model = ARCHS[arch]()
    sd_shell(model, options.get("sd_layers", []), config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: state_dict does not fit {arch}: {exc}") from None
    for name, layer in sd_layers(model):
        try:
            layer.validate(name)     # grid, support, code ranges, row pattern
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    model.eval()
    info = {"metrics": blob.get("metrics", {}), "options": options}
    return (model, config, info) if with_info else (model, config)
