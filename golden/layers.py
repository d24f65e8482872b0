"""SmartDeal drop-in layers: `SDLinear`, `SDConv2d`, and `convert_to_sd`.

An SD layer holds the coefficients ``C`` and the bases ``B`` as parameters and builds
its weight as ``W = (pow2(C) * mask) . B`` (rows of ``S``, blocks of ``block_rows``
rows per basis, `golden.sdweight`):

* ``C`` (``(Cout, R, S)``) always holds representable values (0 or a sum of
  ``terms`` signed powers of two in ``[exp_min, exp_max]``); the forward pass still
  projects it with a straight-through estimator, so a gradient reaches ``C`` (the
  bucket-switch update of `golden.training` reads it) and a ``C`` edited by hand or by
  SGD is projected, never used raw.
* ``B`` (``(Cout, n_blocks, S, S)``) is float; the forward pass fake-quantises it to
  ``basis_bits`` with one symmetric scale per output channel (STE), exactly as
  `to_sdweight` quantises it, so training sees the weights the hardware rebuilds.
* ``mask`` (buffer) is the frozen support: the initial non-zeros of ``C``;
  ``row_keep`` (buffer, ``(n_groups, R)``) is the structural row pattern of each group
  of ``lanes`` filters.  Nothing outside them ever becomes non-zero.

`to_sdweight` returns the integer form the hardware uses (`golden.sdweight.SDWeight`).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from golden.decompose import decompose
from golden.quantize import codes_from_values, project
from golden.sdweight import SDWeight, rows_per_filter
from golden.sparsity import group_of_filters, group_rows_any
from hw.config import SDConfig, load_config

__all__ = ["SDLinear", "SDConv2d", "SDLayer", "convert_to_sd", "ConversionReport",
           "sd_layers", "to_dense", "fake_quant_basis"]

log = logging.getLogger(__name__)


class _ProjectSTE(torch.autograd.Function):
    """Forward: power-of-two projection; backward: identity (straight-through)."""

    @staticmethod
    def forward(ctx, c, exp_min, exp_max, terms):
        return project(c.contiguous(), exp_min, exp_max, terms)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None


def basis_scale(b: torch.Tensor, config: SDConfig) -> torch.Tensor:
    """Per-output-channel scale of the integer basis, float32 ``(Cout,)`` (1 if all zero)."""
    bmax = b.detach().abs().flatten(1).amax(1).to(torch.float32)
    return torch.where(bmax > 0, bmax / config.basis_max, torch.ones_like(bmax))


def fake_quant_basis(b: torch.Tensor, config: SDConfig) -> torch.Tensor:
    """``B`` rounded to ``basis_bits`` at its per-channel scale, straight-through gradient."""
    s = basis_scale(b, config).to(b.dtype)[:, None, None, None]
    q = torch.round(b.detach() / s).clamp(config.basis_min, config.basis_max) * s
    return b + (q - b).detach()


class SDLayer(nn.Module):
    """Common part of `SDLinear` and `SDConv2d` (not used directly)."""

    weight_shape: tuple[int, ...]
    config: SDConfig

    def _init_sd(self, weight_shape: tuple[int, ...], config, bias: bool,
                 dtype: torch.dtype | None) -> None:
        cfg = load_config(config)
        self.config = cfg
        self.weight_shape = tuple(int(d) for d in weight_shape)
        cout = self.weight_shape[0]
        s = cfg.basis_size
        r = rows_per_filter(self.weight_shape, s)
        nb = -(-r // cfg.block_rows)
        dtype = dtype or torch.float32
        self.C = nn.Parameter(torch.zeros(cout, r, s, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(cout, nb, s, s, dtype=dtype))
        self.register_buffer("mask", torch.ones(cout, r, s, dtype=torch.bool))
        self.register_buffer("row_keep", torch.ones(-(-cout // cfg.lanes), r,
                                                    dtype=torch.bool))
        if bias:
            self.bias = nn.Parameter(torch.zeros(cout, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    # ------------------------------------------------------------ geometry
    @property
    def out_features_or_channels(self) -> int:
        return self.weight_shape[0]

    @property
    def rows(self) -> int:
        return self.C.shape[1]

    @property
    def n_blocks(self) -> int:
        return self.B.shape[1]

    def support(self) -> torch.Tensor:
        """Where ``C`` may be non-zero: frozen mask AND the group's row pattern."""
        group = group_of_filters(self.weight_shape[0], self.config.lanes)
        return self.mask & self.row_keep[group.to(self.mask.device)][..., None]

    # -------------------------------------------------------------- weights
    def coefficients(self) -> torch.Tensor:
        """``pow2(C) * support`` with a straight-through gradient, ``(Cout, R, S)``."""
        cfg = self.config
        c = _ProjectSTE.apply(self.C, cfg.exp_min, cfg.exp_max, cfg.terms)
        return c * self.support()

    def weight_from(self, coef: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
        """Dense weight of coefficient rows and bases (batched over blocks)."""
        cout, r, s = coef.shape
        nb = basis.shape[1]
        m = r if nb == 1 else self.config.block_rows
        if nb * m != r:
            coef = F.pad(coef, (0, 0, 0, nb * m - r))
        rows = torch.matmul(coef.view(cout, nb, m, s), basis)          # (Cout, nb, m, S)
        k = math.prod(self.weight_shape[1:])
        return rows.reshape(cout, -1)[:, :k].reshape(self.weight_shape)

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight the forward pass uses (quantised basis, projected ``C``)."""
        return self.weight_from(self.coefficients(), fake_quant_basis(self.B, self.config))

    # ------------------------------------------------------------ conversion
    def _fill_from_dense(self, layer: nn.Module, name: str, decompose_options: dict):
        """Decompose a dense twin's weight into this layer and copy its bias."""
        self._sd_name = name
        sdw = decompose(layer.weight, self.config, name=name, **decompose_options)
        self.load_sdweight(sdw)
        self.decompose_info = dict(sdw.extra)
        if layer.bias is not None:
            with torch.no_grad():
                self.bias.copy_(layer.bias)
        return self.to(layer.weight.device)

    @torch.no_grad()
    def load_sdweight(self, sdw: SDWeight) -> "SDLayer":
        """Take codes, basis and structure from an `SDWeight` of the same shape/config."""
        if sdw.weight_shape != self.weight_shape:
            raise ValueError(f"{sdw.name}: SDWeight shape {sdw.weight_shape} does not match "
                             f"layer weight shape {self.weight_shape}")
        if sdw.config != self.config:
            raise ValueError(f"{sdw.name}: SDWeight configuration differs from the layer's "
                             f"({sdw.config.summary()} vs {self.config.summary()})")
        c = sdw.coefficients()
        self.C.copy_(c.to(self.C.dtype))
        b = sdw.basis.to(torch.float64) * sdw.basis_scale[:, None, None, None]
        self.B.copy_(b.to(self.B.dtype))
        self.mask.copy_(c != 0)
        self.row_keep.copy_(sdw.row_keep)
        return self

    @torch.no_grad()
    def to_sdweight(self, name: str | None = None) -> SDWeight:
        """The integer-basis form of this layer (what the hardware stores and rebuilds).

        Uses the same per-channel basis scale and rounding as the forward pass, so
        ``to_sdweight().reconstruct()`` equals ``weight`` up to float rounding.
        """
        cfg = self.config
        name = name or getattr(self, "_sd_name", None) or type(self).__name__
        coef = project(self.C.detach().float().contiguous(), cfg.exp_min, cfg.exp_max,
                       cfg.terms) * self.support()
        codes = codes_from_values(coef.cpu().to(torch.float64), cfg.exp_min, cfg.exp_max,
                                  cfg.terms, name=name)
        b = self.B.detach().float().cpu()
        s = basis_scale(b, cfg)
        b_int = torch.round(b / s[:, None, None, None]).clamp(cfg.basis_min, cfg.basis_max)
        rows_nz = codes.mask.any(dim=-1).any(dim=-1)
        row_keep = self.row_keep.cpu() & group_rows_any(rows_nz, cfg.lanes)
        return SDWeight(config=cfg, weight_shape=self.weight_shape, mask=codes.mask,
                        sign=codes.sign, exponent=codes.exponent,
                        basis=b_int.to(torch.int32), basis_scale=s.to(torch.float64),
                        row_keep=row_keep, name=name)

    @torch.no_grad()
    def validate(self, name: str | None = None) -> SDWeight:
        """Raise ValueError unless ``C`` is on the power-of-two grid and inside the support.

        Returns the layer's `SDWeight` (whose own validation checks code ranges, the
        basis width and the structural row pattern).
        """
        cfg = self.config
        name = name or getattr(self, "_sd_name", None) or type(self).__name__
        c = self.C.detach()
        if not torch.isfinite(c).all() or not torch.isfinite(self.B.detach()).all():
            raise ValueError(f"{name}: C or B holds NaN or infinite values")
        if not torch.equal(project(c.float().contiguous(), cfg.exp_min, cfg.exp_max,
                                   cfg.terms), c.float()):
            raise ValueError(f"{name}: C holds values that are not sums of {cfg.terms} "
                             f"power(s) of two in [2**{cfg.exp_min}, 2**{cfg.exp_max}]")
        if (c.ne(0) & ~self.support()).any():
            raise ValueError(f"{name}: C is non-zero outside its frozen mask / row pattern")
        return self.to_sdweight(name)

    def sd_extra_repr(self) -> str:
        cfg = self.config
        live = float(self.support().float().mean()) if self.mask.numel() else 0.0
        return (f"S={cfg.basis_size}, terms={cfg.terms}, e=[{cfg.exp_min},{cfg.exp_max}], "
                f"B={cfg.basis_bits}b, rows={self.rows}, blocks={self.n_blocks}, "
                f"rows_kept={int(self.row_keep.sum())}/{self.row_keep.numel()}, "
                f"support={live:.3f}")


class SDLinear(SDLayer):
    """SmartDeal twin of `torch.nn.Linear` (same constructor arguments, plus ``config``).

    A freshly constructed layer decomposes a default-initialised dense weight, so it can
    replace ``nn.Linear`` as is; `from_dense` converts a trained one.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 config: "SDConfig | str | None" = None, device=None, dtype=None,
                 *, init: bool = True):
        super().__init__()
        for n, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SDLinear: {n} must be an int >= 1, got {v!r}")
        self.in_features = in_features
        self.out_features = out_features
        self._init_sd((out_features, in_features), config, bias, dtype)
        if init:
            dense = nn.Linear(in_features, out_features, bias=bias, dtype=dtype)
            self.load_sdweight(decompose(dense.weight, self.config, name="SDLinear"))
            if bias:
                with torch.no_grad():
                    self.bias.copy_(dense.bias)
        if device is not None:
            self.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    @classmethod
    def from_dense(cls, layer: nn.Linear, config: "SDConfig | str | None" = None, *,
                   name: str = "linear", **decompose_options) -> "SDLinear":
        """Decompose a trained `nn.Linear` (options: see `golden.decompose`)."""
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"{name}: expected nn.Linear, got {type(layer).__name__}")
        sd = cls(layer.in_features, layer.out_features, layer.bias is not None, config,
                 dtype=layer.weight.dtype, init=False)
        return sd._fill_from_dense(layer, name, decompose_options)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self.sd_extra_repr()}")


class SDConv2d(SDLayer):
    """SmartDeal twin of `torch.nn.Conv2d` (``groups == 1``, zero padding only).

    Any kernel size: a filter ``(Cin, kh, kw)`` is flattened and cut into rows of ``S``
    (exactly kernel rows when ``kw == S``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1,
                 padding=0, dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", config: "SDConfig | str | None" = None,
                 device=None, dtype=None, *, init: bool = True):
        super().__init__()
        if groups != 1:
            raise ValueError(f"SDConv2d: groups={groups!r} is not supported (the lanes of a "
                             f"group share input rows); only groups=1")
        if padding_mode != "zeros":
            raise ValueError(f"SDConv2d: padding_mode={padding_mode!r} is not supported; "
                             f"only 'zeros'")
        # nn.Conv2d validates and normalises the geometry arguments for us.
        proto = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                          groups, bias, padding_mode, dtype=dtype)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = proto.kernel_size, proto.stride
        self.padding, self.dilation = proto.padding, proto.dilation
        self.groups, self.padding_mode = 1, "zeros"
        self._init_sd(tuple(proto.weight.shape), config, bias, dtype)
        if init:
            self.load_sdweight(decompose(proto.weight, self.config, name="SDConv2d"))
            if bias:
                with torch.no_grad():
                    self.bias.copy_(proto.bias)
        if device is not None:
            self.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, config: "SDConfig | str | None" = None, *,
                   name: str = "conv", **decompose_options) -> "SDConv2d":
        """Decompose a trained `nn.Conv2d` (options: see `golden.decompose`)."""
        if not isinstance(layer, nn.Conv2d):
            raise TypeError(f"{name}: expected nn.Conv2d, got {type(layer).__name__}")
        reason = conv_unsupported(layer)
        if reason:
            raise ValueError(f"{name}: {reason}")
        sd = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                 layer.padding, layer.dilation, 1, layer.bias is not None, "zeros", config,
                 dtype=layer.weight.dtype, init=False)
        return sd._fill_from_dense(layer, name, decompose_options)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        return s + f", bias={self.bias is not None}, {self.sd_extra_repr()}"


def conv_unsupported(layer: nn.Conv2d) -> str | None:
    """Why a `nn.Conv2d` cannot become an `SDConv2d` (None when it can)."""
    if layer.groups != 1:
        return f"grouped convolution (groups={layer.groups}) is not supported"
    if layer.padding_mode != "zeros":
        return f"padding_mode={layer.padding_mode!r} is not supported"
    return None


# ---------------------------------------------------------------- conversion
@dataclass
class ConversionReport:
    """What `convert_to_sd` did: converted layers and those left alone (with why)."""

    converted: list[dict] = field(default_factory=list)
    left_alone: list[dict] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"converted {len(self.converted)} layer(s):"]
        for c in self.converted:
            lines.append(f"  {c['name']:<20} {c['kind']:<7} {str(c['shape']):<18} "
                         f"prune={c['prune']:.2f} rel_err={c['rel_error']:.4f} "
                         f"{c['bits_per_weight']:.2f} bits/weight")
        lines.append(f"left alone {len(self.left_alone)} module(s):")
        for c in self.left_alone:
            lines.append(f"  {c['name']:<20} {c['type']:<12} {c['reason']}")
        return "\n".join(lines)


def _prune_for(prune, name: str) -> float:
    if prune is None:
        return 0.0
    if isinstance(prune, dict):
        return float(prune.get(name, 0.0))
    return float(prune)


def convert_to_sd(model: nn.Module, config: "SDConfig | str | None" = None, *,
                  prune: "float | dict[str, float] | None" = None, skip=(),
                  progress: bool = False, **decompose_options) -> ConversionReport:
    """Replace the supported layers of ``model`` (in place) by SD layers.

    Parameters
    ----------
    model : nn.Module
        Any module tree.  `nn.Linear` and `nn.Conv2d` (``groups == 1``, zero padding)
        are converted; every other module that owns parameters is left alone and listed
        in the report with the reason (also logged at INFO level).
    config : SDConfig, preset name or None
    prune : float or dict
        Structural pruning fraction, for all layers or per qualified layer name.
    skip : iterable of str
        Qualified names of layers to keep dense.
    progress : bool
        Show a tqdm bar over the layers.
    **decompose_options
        Passed to `golden.decompose.decompose`.

    Returns
    -------
    ConversionReport
    """
    cfg = load_config(config)
    if isinstance(prune, dict):
        names = {n for n, _ in model.named_modules()}
        unknown = sorted(set(prune) - names)
        if unknown:
            raise ValueError(f"prune fractions given for unknown layer(s) {unknown}")
    skip = set(skip)
    report = ConversionReport()
    todo = []
    for name, mod in model.named_modules():
        if not name or isinstance(mod, SDLayer):
            continue
        own = [p for p in mod.parameters(recurse=False)]
        if isinstance(mod, (nn.Linear, nn.Conv2d)) and type(mod) in (nn.Linear, nn.Conv2d):
            reason = "in skip list" if name in skip else (
                conv_unsupported(mod) if isinstance(mod, nn.Conv2d) else None)
            if reason is None:
                todo.append((name, mod))
                continue
        elif own:
            reason = ("normalisation/1-D parameters stay dense"
                      if all(p.dim() <= 1 for p in own)
                      else f"{type(mod).__name__} is not a supported layer type")
        else:
            continue
        report.left_alone.append({"name": name, "type": type(mod).__name__, "reason": reason})
        log.info("convert_to_sd: left %s (%s) alone: %s", name, type(mod).__name__, reason)
    iterator = todo
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(todo, desc="decompose", unit="layer")
    for name, mod in iterator:
        frac = _prune_for(prune, name)
        cls = SDLinear if isinstance(mod, nn.Linear) else SDConv2d
        sd = cls.from_dense(mod, cfg, name=name, prune=frac, **decompose_options)
        sdw = sd.to_sdweight(name)
        _set_submodule(model, name, sd)
        report.converted.append({
            "name": name, "kind": sdw.kind, "shape": sdw.weight_shape, "prune": frac,
            "rel_error": _rel(mod.weight, sdw),
            "bits_per_weight": sdw.storage_bits().bits_per_weight,
            "weights": sdw.storage_bits().weights, "density": sdw.density})
    return report


def _rel(weight: torch.Tensor, sdw: SDWeight) -> float:
    w = weight.detach().to(torch.float64).cpu()
    ref = w.norm()
    err = (w - sdw.reconstruct().to(torch.float64)).norm()
    return float(err / ref) if ref > 0 else float(err)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def sd_layers(model: nn.Module):
    """``(name, layer)`` of every SD layer of ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SDLayer)]


@torch.no_grad()
def to_dense(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose SD layers are dense layers holding
    ``to_sdweight().reconstruct()``: the weights the hardware rebuilds, integer basis
    included.  Accuracy "after decomposition" is measured on this copy."""
    dense = copy.deepcopy(model)
    for name, sd in sd_layers(dense):
        w = sd.to_sdweight(name).reconstruct().to(sd.B.dtype)
        if isinstance(sd, SDLinear):
            new = nn.Linear(sd.in_features, sd.out_features, sd.bias is not None)
        else:
            new = nn.Conv2d(sd.in_channels, sd.out_channels, sd.kernel_size, sd.stride,
                            sd.padding, sd.dilation, bias=sd.bias is not None)
        new.weight.copy_(w)
        if sd.bias is not None:
            new.bias.copy_(sd.bias)
        _set_submodule(dense, name, new.to(sd.B.device))
    return dense
