"""Training: dense, then in SD form (frozen mask, STE, bucket switch), and the pipeline.

SD training follows the reference (``SmartDeal-Training``):

* the support (``mask``) is frozen at conversion: a coefficient outside it never
  becomes non-zero, and the structural row pattern (``row_keep``) is never left;
* ``B`` (and biases, and any dense layer) are trained by SGD with momentum, through
  the straight-through estimators of `golden.layers`;
* coefficients move by the **bucket switch**: per coefficient, a momentum buffer of its
  gradient gives the direction of the SGD update ``d = -lr * buf``; ``sign(d)``
  accumulates in a counter; when ``|counter|`` reaches ``bar`` (default 1, the
  reference's) the coefficient is multiplied by ``2**(+-1)`` (magnitude up when ``d``
  points away from zero, down when towards it), a zero coefficient inside the mask
  becomes ``+-2**exp_min``, a magnitude halved below ``2**exp_min`` becomes 0 (it may
  come back), one doubled past the top saturates; the counter is then reset.  Updates
  with ``|d| <= dc_threshold`` count as no move (the reference's ``dC_threshold``).
  Counters are reset every epoch, as in the reference.
* optional re-projection after every step (`reproject`), which puts every ``C`` back
  onto the representable set and the support (a no-op for switch updates, needed when
  ``C`` is trained by plain SGD, the reference's ``--quant-each-step``).

So after any number of steps every coefficient is 0 or a sum of ``terms`` signed powers
of two in ``[exp_min, exp_max]`` and the structural pattern holds.

Before the conversion, `prune_dense` prunes whole rows of the dense model gradually
(cubic ramp, rows ranked over each layer, distilled from the unpruned model) so that the
remaining rows learn to carry the pruned ones; `run_pipeline` chains dense training,
that pruning, the conversion (`convert_with_patterns`) and the SD fine-tuning.
Recipe choices are made on `validation_split`, never on the test split.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from golden.decompose import intra_op_threads
from golden.layers import ConversionReport, SDLayer, convert_to_sd, sd_layers, to_dense
from golden.quantize import project
from golden.sparsity import SCOPES, group_of_filters, prune_rows
from hw.config import SDConfig, load_config

__all__ = ["evaluate", "batches", "augment_shift", "train_dense", "BucketSwitch", "switch_values",
           "reproject", "sd_parameters", "sd_training_step", "finetune_sd",
           "storage_report", "PipelineResult", "run_pipeline", "check_sd_structure",
           "distillation_loss", "prune_schedule", "row_masks", "prune_dense",
           "convert_with_patterns", "validation_split", "DEFAULT_PRUNE"]


# ------------------------------------------------------------------- basics
@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 1024) -> float:
    """Top-1 accuracy in percent."""
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    model.train(was)
    return 100.0 * correct / max(1, len(x))


def batches(n: int, batch_size: int, generator: torch.Generator):
    """Shuffled index batches of one epoch."""
    perm = torch.randperm(n, generator=generator)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="epoch", disable=not progress, leave=False)


def augment_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Translate every image by a random -1/0/+1 pixel in each direction (zero fill).

    The digits are centred in a tight 8x8 box; one-pixel shifts are the augmentation
    that closes most of the train/test gap of this small set.
    """
    n, _, h, w = x.shape
    dy = torch.randint(-1, 2, (n,), generator=generator)
    dx = torch.randint(-1, 2, (n,), generator=generator)
    padded = F.pad(x, (1, 1, 1, 1))
    out = torch.empty_like(x)
    for i in (-1, 0, 1):          # nine shift classes, each applied to its images at once
        for j in (-1, 0, 1):
            sel = (dy == i) & (dx == j)
            out[sel] = padded[sel][:, :, 1 + i:1 + i + h, 1 + j:1 + j + w]
    return out


def train_dense(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 60,
                lr: float = 1e-2, batch_size: int = 64, weight_decay: float = 5e-2,
                augment: bool = True, seed: int = 0, progress: bool = False) -> list[float]:
    """Train with AdamW, a one-cycle learning rate and shift augmentation.

    Returns the mean training loss of every epoch.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = max(1, epochs) * -(-len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    losses = []
    model.train()
    with _bar(epochs, "dense", progress) as bar:
        for _ in range(epochs):
            total = 0.0
            for idx in batches(len(x), batch_size, gen):
                xb = augment_shift(x[idx], gen) if augment else x[idx]
                opt.zero_grad()
                loss = F.cross_entropy(model(xb), y[idx])
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / len(x))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            bar.update()
    return losses


# -------------------------------------------------------------- bucket switch
def switch_values(c: torch.Tensor, direction: torch.Tensor, support: torch.Tensor,
                  config: SDConfig) -> torch.Tensor:
    """Apply a bucket switch: ``direction`` in {-1, 0, +1} is the sign of the update.

    Non-zero ``c`` is multiplied by ``2**(direction * sign(c))`` and projected
    (saturating at the top, 0 below ``2**exp_min``); zero ``c`` inside ``support`` with
    a non-zero direction becomes ``direction * 2**exp_min``; outside ``support`` all is 0.
    """
    cfg = config
    factor = torch.pow(2.0, direction * torch.sign(c))
    moved = c * factor
    small = moved.abs() < 2.0 ** cfg.exp_min
    moved = project(moved.masked_fill(small, 0.0).contiguous(), cfg.exp_min, cfg.exp_max,
                    cfg.terms)
    born = (c == 0) & (direction != 0)
    out = torch.where(born, direction * 2.0 ** cfg.exp_min, moved)
    return out * support


def _row_energy(layer: SDLayer) -> torch.Tensor:
    """``sum_i B[o, b(r), j, i]**2`` per coefficient ``(o, r, j)`` (floor 1e-12).

    A unit change of ``C[o, r, j]`` moves the rebuilt weight row by ``B[o, b(r), j, :]``;
    dividing the update by this energy (a diagonal Gauss-Newton step) makes ``lr`` a
    weight-space learning rate, independent of how the scale is split between C and B.
    """
    b = layer.B.detach()
    e = b.square().sum(-1)                                   # (Cout, n_blocks, S)
    rows = layer.C.shape[1]
    block = torch.arange(rows, device=b.device) // layer.config.block_rows
    return e[:, block].clamp_min(1e-12)


class BucketSwitch:
    """Bucket-switch updater of the coefficients ``C`` of every SD layer of a model.

    Parameters
    ----------
    model : nn.Module
    lr, momentum, weight_decay : float
        Define the SGD update ``d = -lr * buf`` (``buf`` the momentum buffer of the
        gradient of ``C``) that drives the switch.
    bar : int
        ``mode="sign"``: accumulated update signs needed for one switch (reference
        default 1).
    dc_threshold : float
        Updates with ``|d| <= dc_threshold`` do not count (0 disables).
    mode : {"sign", "accumulate"}
        ``"sign"`` is the reference: the counter adds ``sign(d)`` and a coefficient
        switches one level when ``|counter| >= bar``.  ``"accumulate"`` adds ``d``
        itself and switches when ``C + counter`` rounds (`golden.quantize` rule) to a
        different level, i.e. when the accumulated update has crossed half the gap to
        the neighbouring level; the counter then restarts from 0.  The sign mode moves
        a coefficient by a factor 2 whatever the size of ``d``, which this small
        network without normalisation layers does not survive (``docs/golden.md``);
        the accumulate mode is the default of `finetune_sd`.
    """

    MODES = ("sign", "accumulate")

    def __init__(self, model: nn.Module, lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, bar: int = 1, dc_threshold: float = 0.0,
                 mode: str = "sign", precondition: bool = False):
        if isinstance(bar, bool) or not isinstance(bar, int) or bar < 1:
            raise ValueError(f"bucket switch bar must be an int >= 1, got {bar!r}")
        if mode not in self.MODES:
            raise ValueError(f"bucket switch mode must be one of {self.MODES}, got {mode!r}")
        self.layers = [layer for _, layer in sd_layers(model)]
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.bar, self.dc_threshold, self.mode = bar, dc_threshold, mode
        self.precondition = precondition
        self.buf = [torch.zeros_like(layer.C) for layer in self.layers]
        self.counter = [torch.zeros_like(layer.C) for layer in self.layers]
        self.switches = 0

    def reset_counters(self) -> None:
        for c in self.counter:
            c.zero_()

    @torch.no_grad()
    def step(self) -> int:
        """Consume ``C.grad`` of every layer, switch, clear the grads; returns #switches."""
        n = 0
        for layer, buf, counter in zip(self.layers, self.buf, self.counter):
            g = layer.C.grad
            if g is None:
                continue
            support = layer.support()
            c = layer.C.detach()
            if self.weight_decay:
                g = g + self.weight_decay * c
            buf.mul_(self.momentum).add_(g)
            d = -self.lr * buf
            if self.precondition:
                d = d / _row_energy(layer)
            if self.dc_threshold > 0:
                d = d.masked_fill(d.abs() <= self.dc_threshold, 0.0)
            if self.mode == "sign":
                counter.add_(torch.sign(d) * support)
                active = counter.abs() >= self.bar
                new = switch_values(c, torch.sign(counter) * active, support, layer.config)
            else:
                counter.add_(d * support)
                cfg = layer.config
                new = project((c + counter).contiguous(), cfg.exp_min, cfg.exp_max,
                              cfg.terms) * support
                active = new != c
            layer.C.copy_(new)
            counter.masked_fill_(active, 0.0)
            n += int(active.sum())
            layer.C.grad = None
        self.switches += n
        return n


@torch.no_grad()
def reproject(model: nn.Module) -> None:
    """Put every SD coefficient back onto the representable set and the support."""
    for _, layer in sd_layers(model):
        cfg = layer.config
        c = project(layer.C.detach().contiguous(), cfg.exp_min, cfg.exp_max, cfg.terms)
        layer.C.copy_(c * layer.support())


def sd_parameters(model: nn.Module, include_c: bool) -> list[nn.Parameter]:
    """Parameters trained by the optimizer: everything but the SD ``C`` (unless asked)."""
    cs = {id(layer.C) for _, layer in sd_layers(model)}
    return [p for p in model.parameters() if include_c or id(p) not in cs]


def distillation_loss(logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor,
                      alpha: float, temperature: float) -> torch.Tensor:
    """``(1 - alpha) * CE(logits, y) + alpha * T**2 * KL(teacher_T || student_T)``."""
    ce = F.cross_entropy(logits, y)
    if alpha <= 0:
        return ce
    t = temperature
    kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                  reduction="batchmean", log_target=True)
    return (1.0 - alpha) * ce + alpha * t * t * kl


def sd_training_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                     switch: BucketSwitch | None, x: torch.Tensor, y: torch.Tensor,
                     reproject_after: bool = True, teacher: nn.Module | None = None,
                     distill_alpha: float = 0.5, temperature: float = 4.0) -> float:
    """One SD training step: forward, backward, bucket switch, SGD, re-projection.

    With a ``teacher`` (the dense model) the loss is `distillation_loss`.
    """
    optimizer.zero_grad()
    for _, layer in sd_layers(model):
        layer.C.grad = None
    logits = model(x)
    if teacher is not None:
        with torch.no_grad():
            t_logits = teacher(x)
        loss = distillation_loss(logits, y, t_logits, distill_alpha, temperature)
    else:
        loss = F.cross_entropy(logits, y)
    loss.backward()
    if switch is not None:
        switch.step()
    optimizer.step()
    if reproject_after:
        reproject(model)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"SD training diverged: loss is {value} (lower the "
                                 f"learning rate or raise the bucket-switch bar)")
    return value


def finetune_sd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 30,
                lr: float = 0.02, momentum: float = 0.9, weight_decay: float = 0.0,
                batch_size: int = 64, c_update: str = "switch", bar: int = 1,
                dc_threshold: float = 0.0, switch_lr: float | None = None,
                switch_mode: str = "accumulate", precondition: bool = True,
                reproject_after: bool = True, augment: bool = True, seed: int = 0,
                teacher: nn.Module | None = None, distill_alpha: float = 0.5,
                temperature: float = 4.0, progress: bool = False) -> dict:
    """Fine-tune an SD model (B by SGD with momentum and cosine decay; C per ``c_update``).

    ``c_update``: ``"switch"`` (bucket switch), ``"sgd"`` (C in the optimizer, then
    re-projected: the reference's quant-each-step), or ``"frozen"`` (C fixed).
    ``teacher``: distil from this (dense) model's logits (`distillation_loss`).
    """
    if c_update not in ("switch", "sgd", "frozen"):
        raise ValueError(f"c_update must be 'switch', 'sgd' or 'frozen', got {c_update!r}")
    if c_update == "sgd" and not reproject_after:
        raise ValueError("c_update='sgd' needs reproject_after=True (C would leave the "
                         "representable set)")
    gen = torch.Generator().manual_seed(seed)
    if teacher is not None:
        teacher.eval()
    for _, layer in sd_layers(model):
        layer.C.requires_grad_(c_update != "frozen")
    opt = torch.optim.SGD(sd_parameters(model, c_update == "sgd"), lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    switch_base = switch_lr if switch_lr is not None else lr
    switch = (BucketSwitch(model, switch_base, momentum,
                           0.0, bar, dc_threshold, switch_mode, precondition)
              if c_update == "switch" else None)
    losses = []
    model.train()
    with _bar(epochs, "sd fine-tune", progress) as pbar:
        for _ in range(epochs):
            if switch is not None:
                switch.reset_counters()
            total = 0.0
            for idx in batches(len(x), batch_size, gen):
                xb = augment_shift(x[idx], gen) if augment else x[idx]
                total += sd_training_step(model, opt, switch, xb, y[idx], reproject_after,
                                          teacher, distill_alpha, temperature) * len(idx)
            sched.step()
            if switch is not None:            # the switch's lr follows B's schedule
                switch.lr = switch_base * opt.param_groups[0]["lr"] / lr
            losses.append(total / len(x))
            pbar.set_postfix(loss=f"{losses[-1]:.4f}")
            pbar.update()
    for _, layer in sd_layers(model):
        layer.C.requires_grad_(True)
    return {"losses": losses, "switches": switch.switches if switch else 0}


# ------------------------------------------------------ gradual row pruning
def prune_schedule(fraction: float, epoch: int, ramp_epochs: int) -> float:
    """Pruning fraction in force during ``epoch`` (0-based) of a gradual schedule.

    Cubic ramp (Zhu & Gupta, "To prune, or not to prune", 2017): fast at first, while
    many rows carry little, slow towards the end, reaching ``fraction`` in epoch
    ``ramp_epochs - 1`` and staying there; ``ramp_epochs <= 1`` prunes at once.
    """
    if ramp_epochs <= 1:
        return fraction
    t = min(1.0, (epoch + 1) / ramp_epochs)
    return fraction * (1.0 - (1.0 - t) ** 3)


def row_masks(weight: torch.Tensor, keep: torch.Tensor, lanes: int,
              basis_size: int) -> torch.Tensor:
    """Element mask of a dense ``weight`` from its group row pattern ``keep`` (n_groups, R).

    Element ``k`` of the flattened filter ``o`` lies in row ``k // S`` (the layout of
    `golden.sdweight.weight_to_rows`), so it is kept iff ``keep[o // lanes, k // S]``.
    """
    cout = weight.shape[0]
    k = weight[0].numel()
    rows = torch.arange(k, device=keep.device) // basis_size
    group = group_of_filters(cout, lanes).to(keep.device)
    return keep[group][:, rows].reshape(weight.shape).to(weight.device)


def _prunable(model: nn.Module, prune) -> list[tuple[str, nn.Module, float]]:
    """``(name, layer, fraction)`` of the dense Linear/Conv2d layers ``prune`` names."""
    out = []
    for name, mod in model.named_modules():
        if type(mod) in (nn.Linear, nn.Conv2d):
            frac = float(prune.get(name, 0.0)) if isinstance(prune, dict) else float(prune or 0.0)
            out.append((name, mod, frac))
    if isinstance(prune, dict):
        unknown = sorted(set(prune) - {n for n, _, _ in out})
        if unknown:
            raise ValueError(f"prune fractions given for unknown layer(s) {unknown}")
    return out


def prune_dense(model: nn.Module, x: torch.Tensor, y: torch.Tensor, prune,
                config: "SDConfig | str | None" = None, *, epochs: int = 20,
                ramp: float = 0.6, lr: float = 2e-3, weight_decay: float = 5e-2,
                batch_size: int = 64, criterion: str = "energy", scope: str = "layer",
                teacher: nn.Module | None = None, distill_alpha: float = 0.5,
                temperature: float = 4.0, augment: bool = True, seed: int = 0,
                progress: bool = False) -> dict[str, torch.Tensor]:
    """Gradual structural row pruning of a dense model, trained as the rows go (in place).

    At the start of every epoch each layer's row pattern is chosen again from its current
    weights (`golden.sparsity.prune_rows`, ``criterion`` and ``scope``) at the fraction of
    `prune_schedule` (the full fraction after ``ramp * epochs`` epochs); pruned rows are
    set to zero and kept there after every optimizer step (AdamW, cosine decay), so the
    remaining rows learn to carry what the pruned ones did.  Pruned rows are zero, hence
    score lowest, and stay pruned as the fraction grows.  With ``epochs=0`` the rows are
    pruned at once and nothing is trained.

    Parameters
    ----------
    prune : float or dict
        Final pruning fraction, for every Linear/Conv2d layer or per layer name.
    config : SDConfig, preset name or None
        Gives ``lanes`` (group size) and ``basis_size`` (row length).
    teacher : nn.Module, optional
        Distil from its logits (`distillation_loss`), e.g. the unpruned dense model.

    Returns
    -------
    dict
        Layer name -> final row pattern ``(n_groups, R)``, True for kept rows (every
        prunable layer, all True where the fraction is 0).
    """
    cfg = load_config(config)
    if scope not in SCOPES:
        raise ValueError(f"pruning scope must be one of {list(SCOPES)}, got {scope!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"pruning epochs must be an int >= 0, got {epochs!r}")
    if not 0.0 < ramp <= 1.0:
        raise ValueError(f"pruning ramp must be in (0, 1], got {ramp!r}")
    layers = _prunable(model, prune)
    span = cfg.exp_max - cfg.exp_min

    @torch.no_grad()
    def choose(epoch: int) -> dict[str, torch.Tensor]:
        ramp_epochs = max(1, math.ceil(ramp * epochs))
        out = {}
        for name, mod, frac in layers:
            keep = prune_rows(mod.weight, prune_schedule(frac, epoch, ramp_epochs), cfg.lanes,
                              cfg.basis_size, criterion, span, name=name, scope=scope)
            mod.weight.mul_(row_masks(mod.weight, keep, cfg.lanes, cfg.basis_size))
            out[name] = keep
        return out

    if epochs == 0:
        return choose(0)
    gen = torch.Generator().manual_seed(seed)
    if teacher is not None:
        teacher.eval()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    model.train()
    with _bar(epochs, "row pruning", progress) as bar:
        for epoch in range(epochs):
            keeps = choose(epoch)
            masks = [row_masks(mod.weight, keeps[name], cfg.lanes, cfg.basis_size)
                     for name, mod, _ in layers]
            total = 0.0
            for idx in batches(len(x), batch_size, gen):
                xb = augment_shift(x[idx], gen) if augment else x[idx]
                opt.zero_grad()
                logits = model(xb)
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(xb)
                    loss = distillation_loss(logits, y[idx], t_logits, distill_alpha,
                                             temperature)
                else:
                    loss = F.cross_entropy(logits, y[idx])
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for (_, mod, _), mask in zip(layers, masks):
                        mod.weight.mul_(mask)
                total += float(loss.detach()) * len(idx)
            sched.step()
            bar.set_postfix(loss=f"{total / len(x):.4f}")
            bar.update()
    model.eval()
    return keeps


def convert_with_patterns(model: nn.Module, config: "SDConfig | str | None",
                          patterns: dict[str, torch.Tensor],
                          criterion: str = "energy") -> ConversionReport:
    """`convert_to_sd` with an explicit row pattern per layer (in place).

    Layers without a pattern are converted unpruned.  Rows that are zero in the dense
    weight (pruned by `prune_dense`) decompose to zero codes and are not stored either.
    """
    report = ConversionReport()
    names = [n for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]
    for name in names:
        kw = {"row_keep": patterns[name]} if name in patterns else {}
        part = convert_to_sd(model, config, skip=[n for n in names if n != name],
                             criterion=criterion, **kw)
        for entry in part.converted:
            if name in patterns:          # the fraction of records the pattern prunes
                entry["prune"] = 1.0 - float(patterns[name].float().mean())
            report.converted.append(entry)
    # modules no conversion could take (the per-layer skips are not reasons)
    report.left_alone.extend(convert_to_sd(model, config).left_alone)
    return report


def validation_split(seed: int = 0, fraction: float = 0.2):
    """The digits training split, cut into train and validation parts (stratified, fixed).

    Returns a `golden.data.DigitsSplit` whose ``x_test``/``y_test`` are the validation
    images (``fraction`` of `load_digits_split(0)`'s 1437 training images, split with
    ``random_state=seed``).  Every choice of recipe or pruning made by looking at
    accuracy is made on it; the test split is only reported.
    """
    from sklearn.model_selection import train_test_split
    from golden.data import DigitsSplit, load_digits_split

    d = load_digits_split(0)
    idx = torch.arange(len(d.y_train)).numpy()
    tr, va = train_test_split(idx, test_size=fraction, random_state=seed,
                              stratify=d.y_train.numpy())
    tr, va = torch.from_numpy(tr), torch.from_numpy(va)
    return DigitsSplit(d.x_train[tr], d.y_train[tr], d.x_train[va], d.y_train[va])


def check_sd_structure(model: nn.Module) -> None:
    """Raise ValueError unless every SD layer is valid (`golden.layers.SDLayer.validate`):
    ``C`` exactly on the power-of-two grid, nothing outside the frozen mask and the
    structural row pattern, codes and basis within the configured ranges."""
    for name, layer in sd_layers(model):
        layer.validate(name)


# ------------------------------------------------------------------- storage
def storage_report(model: nn.Module) -> dict:
    """Storage of every SD layer (packed format v1, `SDWeight.storage_bits`) and totals.

    ``compression_vs_int8`` compares with a dense int8 store of the same layers that
    also keeps one bias/requantisation word per output channel (as the hardware does).
    """
    layers = {}
    tot = {"codes": 0, "index": 0, "basis": 0, "scales": 0, "total": 0, "weights": 0}
    int8_bits = 0
    for name, layer in sd_layers(model):
        sdw = layer.to_sdweight(name)
        sb = sdw.storage_bits().as_dict()
        sb["rows_kept"] = int(sdw.row_keep.sum())
        sb["rows_total"] = int(sdw.row_keep.numel())
        sb["density"] = sdw.density
        layers[name] = sb
        for k in tot:
            tot[k] += sb[k]
        int8_bits += 8 * sb["weights"] + sdw.out_channels * sdw.config.quant_word_bits
    bpw = tot["total"] / max(1, tot["weights"])
    return {"layers": layers, "total": tot, "bits_per_weight": bpw,
            "compression_vs_fp32": 32.0 * tot["weights"] / max(1, tot["total"]),
            "compression_vs_int8": int8_bits / max(1, tot["total"])}


# ------------------------------------------------------------------ pipeline
@dataclass
class PipelineResult:
    """Outcome of `run_pipeline`: models, accuracies, storage and timings."""

    dense_model: nn.Module
    sd_model: nn.Module
    config: SDConfig
    metrics: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


DEFAULT_PRUNE = {"conv2": 0.70, "conv3": 0.72, "fc": 0.40}
"""Per-layer structural pruning fractions of the shipped model (default preset, records
ranked over each layer, ``scope="layer"``).

Budget (default preset: 4 lanes, 59-bit records = 11-bit row index + 4 x 3 4-bit codes,
72-bit basis words per lane and block, 54-bit bias/requantisation words): the fixed
costs of the four layers are 12 841 bits (scales 4 860, basis 6 624, 23 group headers
1 357).  The dense int8 baseline stores 1 293 96-bit weight words (one per group and
row, fc's padding lanes included) + the same 4 860 quant bits = 128 988 bits, so a
weight-memory ratio <= 0.30 leaves ``(0.30 x 128 988 - 12 841) / 59 = 438`` records of
the 1 293 an unpruned model has.  These fractions keep at most 419 (conv1's 12 whole,
conv2 115/384, conv3 215/768, fc 77/129): ratio <= 0.292, 2.46 bits/weight.  Chosen on
the validation split (`validation_split`), see ``docs/golden.md``.
"""


def run_pipeline(config: "SDConfig | str | None" = None, *, prune=DEFAULT_PRUNE,
                 epochs: int = 60, sd_epochs: int = 30, seed: int = 0,
                 dense_lr: float = 1e-2, sd_lr: float = 0.01, c_update: str = "switch",
                 switch_mode: str = "accumulate", precondition: bool = True,
                 bar: int = 1, dc_threshold: float = 0.0, switch_lr: float | None = None,
                 criterion: str = "energy", scope: str = "layer", prune_epochs: int = 40,
                 prune_lr: float = 1e-2, distill_alpha: float = 0.8,
                 temperature: float = 4.0, augment: bool = True,
                 tune_augment: bool = False, progress: bool = False,
                 dense_model: nn.Module | None = None, data=None,
                 threads: int | None = 1) -> PipelineResult:
    """Dense training -> gradual row pruning -> SD conversion -> SD fine-tuning.

    1. dense training (`train_dense`, ``epochs``), skipped when ``dense_model`` is given;
    2. gradual structural row pruning of a copy (`prune_dense`: ``prune_epochs`` epochs,
       ``criterion``/``scope``, distilled from the dense model); ``prune_epochs=0``
       prunes at once;
    3. conversion with those row patterns (`convert_with_patterns`);
    4. SD fine-tuning (`finetune_sd`, ``sd_epochs``, distilled from the dense model with
       ``distill_alpha``/``temperature``; ``distill_alpha=0`` trains on labels only).

    Accuracies after conversion and after fine-tuning are measured on `to_dense`
    copies, i.e. with the integer-basis weights ``SDWeight.reconstruct()``.
    ``augment``: shift augmentation of the dense training; ``tune_augment``: of the
    pruning and fine-tuning (off by default: the pruned network has little capacity to
    spare on shifted digits, and the teacher, trained with shifts, passes on what they
    taught).  ``data``: a `golden.data.DigitsSplit` (default `load_digits_split(0)`; recipe
    choices use `validation_split`).  ``seed`` drives initialisation, shuffling and
    augmentation.  ``threads``: torch intra-op threads during the run (restored after;
    None leaves them): this network's operations are too small for OpenMP to pay off,
    and on a shared 2-core machine 2 threads ran 7-12x slower than 1.
    """
    if threads is not None:
        with intra_op_threads(threads):
            return run_pipeline(config, prune=prune, epochs=epochs, sd_epochs=sd_epochs,
                                seed=seed, dense_lr=dense_lr, sd_lr=sd_lr,
                                c_update=c_update, switch_mode=switch_mode,
                                precondition=precondition, bar=bar,
                                dc_threshold=dc_threshold, switch_lr=switch_lr,
                                criterion=criterion, scope=scope, prune_epochs=prune_epochs,
                                prune_lr=prune_lr, distill_alpha=distill_alpha,
                                temperature=temperature, augment=augment,
                                tune_augment=tune_augment, progress=progress,
                                dense_model=dense_model, data=data,
                                threads=None)
    from golden.data import load_digits_split
    from golden.models import DigitsCNN

    cfg = load_config(config)
    data = load_digits_split(0) if data is None else data
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    if dense_model is None:
        dense = DigitsCNN()
        train_dense(dense, data.x_train, data.y_train, epochs=epochs, lr=dense_lr, seed=seed,
                    augment=augment, progress=progress)
    else:
        dense = dense_model
    dense.eval()
    t_dense = time.perf_counter() - t0
    acc_dense = evaluate(dense, data.x_test, data.y_test)
    teacher = dense if distill_alpha > 0 else None
    model = copy.deepcopy(dense)
    t0 = time.perf_counter()
    patterns = prune_dense(model, data.x_train, data.y_train, prune, cfg,
                           epochs=prune_epochs, lr=prune_lr, criterion=criterion, scope=scope,
                           teacher=teacher, distill_alpha=distill_alpha,
                           temperature=temperature, augment=tune_augment, seed=seed,
                           progress=progress)
    t_prune = time.perf_counter() - t0
    acc_pruned = evaluate(model, data.x_test, data.y_test)
    t0 = time.perf_counter()
    report = convert_with_patterns(model, cfg, patterns, criterion)
    t_convert = time.perf_counter() - t0
    acc_sd = evaluate(to_dense(model), data.x_test, data.y_test)
    # The decomposition alone (no structural pruning), for reference.
    unpruned = copy.deepcopy(dense)
    convert_to_sd(unpruned, cfg, prune=None, criterion=criterion)
    acc_unpruned = evaluate(to_dense(unpruned), data.x_test, data.y_test)
    bpw_unpruned = storage_report(unpruned)["bits_per_weight"]
    t0 = time.perf_counter()
    ft = finetune_sd(model, data.x_train, data.y_train, epochs=sd_epochs, lr=sd_lr,
                     c_update=c_update, bar=bar, dc_threshold=dc_threshold,
                     switch_lr=switch_lr, switch_mode=switch_mode, precondition=precondition,
                     augment=tune_augment, seed=seed, teacher=teacher,
                     distill_alpha=distill_alpha, temperature=temperature,
                     progress=progress)
    t_ft = time.perf_counter() - t0
    check_sd_structure(model)
    model.eval()
    acc_ft = evaluate(to_dense(model), data.x_test, data.y_test)
    storage = storage_report(model)
    metrics = {
        "acc_dense_fp32": acc_dense, "acc_dense_pruned": acc_pruned,
        "acc_sd_decomposed": acc_sd, "acc_sd_finetuned": acc_ft,
        "acc_sd_unpruned_decomposed": acc_unpruned, "bits_per_weight_unpruned": bpw_unpruned,
        "acc_drop_finetuned": acc_dense - acc_ft,
        "train_acc_sd_finetuned": evaluate(to_dense(model), data.x_train, data.y_train),
        "bits_per_weight": storage["bits_per_weight"],
        "compression_vs_fp32": storage["compression_vs_fp32"],
        "compression_vs_int8": storage["compression_vs_int8"],
        "storage": storage, "conversion": report.converted,
        "left_alone": report.left_alone, "switches": ft["switches"],
        "seconds": {"dense": t_dense, "prune": t_prune, "convert": t_convert,
                    "finetune": t_ft},
        "n_test": len(data.y_test), "n_train": len(data.y_train),
    }
    options = {"prune": prune, "epochs": epochs, "sd_epochs": sd_epochs, "seed": seed,
               "dense_lr": dense_lr, "sd_lr": sd_lr, "c_update": c_update, "bar": bar,
               "dc_threshold": dc_threshold, "switch_lr": switch_lr, "criterion": criterion,
               "scope": scope, "prune_epochs": prune_epochs, "prune_lr": prune_lr,
               "distill_alpha": distill_alpha, "temperature": temperature,
               "switch_mode": switch_mode, "precondition": precondition, "augment": augment,
               "tune_augment": tune_augment, "split_seed": 0}
    return PipelineResult(dense, model, cfg, metrics, options)
