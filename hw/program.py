"""Host-side compiler: a network's layers -> descriptors, activation plan, memory images.

The accelerator runs what the descriptors say; this module computes them from layer
geometry and weight placement (everything the hardware would otherwise have to divide or
multiply), plans the ping-pong activation regions, and converts tensors to and from the
activation-bank layout (``docs/architecture.md``):

* **feature map** ``(C, H, W)``: element ``(c, y, x)`` of batch item ``b`` at bank
  ``x % S``, address ``base + b*pitch + (c // L)*H*WQ + y*WQ + x // S``, lane ``c % L``
  (``WQ = ceil(W / S)``, ``L = lanes``);
* **vector** (input of a fully connected layer) of ``N`` elements: viewed as ``R =
  ceil(N / S)`` channels of one ``1 x S`` line, i.e. element ``f`` at bank ``f % S``,
  address ``base + b*pitch + (f // S) // L``, lane ``(f // S) % L``.

`LayerSpec` is the geometry the compiler needs; `specs_from_qnet` builds it from a
`golden.qnet.QNet` and a `golden.pack.PackedNetwork` placement (or any object with the
same attributes), `compile_network` returns a `Program`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from hw.config import SDConfig
from hw.mac import MacLanes
from hw.sequencer import RowAddress, RowSequencer
from hw.descriptor import (DESC_SLOT_WORDS, FIELDS, FLAG_PRELOAD, FLAG_RELU, FLAG_SCATTER,
                           act_bank_depth, encode_field)

__all__ = ["LayerSpec", "ActLayout", "Program", "compile_network", "specs_from_qnet",
           "layer_ideal_cycles", "ACTIVATION_FILL", "first_layer_fill", "RUN_OVERHEAD"]


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class LayerSpec:
    """One layer as the accelerator sees it.

    Attributes
    ----------
    name : str
    kind : {"conv2d", "linear"}
    weight_shape : tuple
        ``(Cout, Cin, kh, kw)`` or ``(Cout, N)``.
    in_shape, out_shape : tuple
        Per item: ``(C, H, W)`` for a convolution, ``(N,)`` / ``(Cout,)`` for linear.
    stride, padding : (int, int)
    relu : bool
    weights : (base, words)
        Placement in the weight memory (Ce for SD, dense words for the baseline).
    basis : (base, words)
        Placement in the basis memory (SD; ``(0, 0)`` for dense).
    quant : (base, words)
    kept_rows : tuple of int
        Rows the accelerator runs per group (``R`` each for dense); for the ideal cycle
        count.
    """

    name: str
    kind: str
    weight_shape: tuple
    in_shape: tuple
    out_shape: tuple
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    relu: bool = False
    weights: tuple = (0, 0)
    basis: tuple = (0, 0)
    quant: tuple = (0, 0)
    kept_rows: tuple = ()
    preload: bool = False   #: the first row of group 0 is in basis block 0

    @property
    def cout(self) -> int:
        return int(self.weight_shape[0])


@dataclass(frozen=True)
class ActLayout:
    """Placement of one activation tensor (per batch item) in the banks."""

    kind: str            #: "fmap" or "vector"
    shape: tuple         #: logical per-item shape: (C, H, W) or (N,)
    base: int
    pitch: int           #: bank words per batch item
    lanes: int
    S: int

    @property
    def words(self) -> int:
        return self.pitch

    def element_addresses(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(bank, address, lane)`` of every element, in C order of ``shape`` (item 0)."""
        L, S = self.lanes, self.S
        if self.kind == "fmap":
            c, h, w = self.shape
            cc, yy, xx = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
            wq = _ceil(w, S)
            addr = self.base + (cc // L) * h * wq + yy * wq + xx // S
            return (xx % S).ravel(), addr.ravel(), (cc % L).ravel()
        f = np.arange(self.shape[0])
        row = f // S
        return f % S, self.base + row // L, row % L

    def pack(self, x: np.ndarray, act_bits: int) -> dict[int, dict[int, int]]:
        """Bank words of a batch ``x`` (``(B, *shape)`` ints): ``{bank: {address: word}}``.

        Every word of the layout's range is present (unused lanes zero), so writing the
        result replaces the whole region.
        """
        x = np.asarray(x, dtype=np.int64)
        if x.shape[1:] != tuple(self.shape):
            raise ValueError(f"activation batch has shape {x.shape}, expected (B, "
                             f"{', '.join(map(str, self.shape))})")
        lo, hi = -(1 << (act_bits - 1)), (1 << (act_bits - 1)) - 1
        if x.size and (x.min() < lo or x.max() > hi):
            raise ValueError(f"activations [{x.min()}, {x.max()}] exceed {act_bits} bits")
        bank, addr, lane = self.element_addresses()
        mask = (1 << act_bits) - 1
        words = {j: {} for j in range(self.S)}
        for b in range(x.shape[0]):
            off = b * self.pitch
            for j in range(self.S):
                for a in range(self.base + off, self.base + off + self.pitch):
                    words[j][a] = 0
            flat = x[b].ravel() & mask
            for k in range(flat.size):
                a = int(addr[k]) + off
                words[int(bank[k])][a] |= int(flat[k]) << (int(lane[k]) * act_bits)
        return words

    def unpack(self, words: dict[int, dict[int, int]], batch: int, act_bits: int) -> np.ndarray:
        """Inverse of `pack`: a ``(batch, *shape)`` int64 array from bank words."""
        bank, addr, lane = self.element_addresses()
        mask = (1 << act_bits) - 1
        out = np.zeros((batch, int(np.prod(self.shape))), dtype=np.int64)
        for b in range(batch):
            off = b * self.pitch
            for k in range(out.shape[1]):
                v = (words[int(bank[k])][int(addr[k]) + off] >> (int(lane[k]) * act_bits)) & mask
                out[b, k] = v - (1 << act_bits) if v >> (act_bits - 1) else v
        return out.reshape(batch, *self.shape)


def _fmap_words(shape, lanes: int, S: int) -> int:
    c, h, w = shape
    return _ceil(c, lanes) * h * _ceil(w, S)


def _vector_words(n: int, lanes: int, S: int) -> int:
    return _ceil(_ceil(n, S), lanes)


#: Cycles a layer's last op needs to reach the activation banks and hand over to the next
#: layer: `hw.sequencer.RowSequencer.LATENCY` (bank read, read data registered, select /
#: rotate) 3 + `hw.mac.MacLanes.LATENCY` + writer
#: FIFO 1 + write 1 + the controller seeing the writer's done and starting the next
#: layer 2.  Every layer pays it once (the activation side cannot overlap layers: the
#: next layer reads what this one writes).
ACTIVATION_FILL = RowSequencer.LATENCY + MacLanes.LATENCY + 1 + 1 + 2



def first_layer_fill(config: SDConfig) -> int:
    """Extra cycles of a run's first layer: its weight side starts with it (later layers'
    weight sides run ahead), so the first row waits for the Ce read and decode (4) and
    then for the later of the first basis preload (``lanes`` words) and its window facts
    (`hw.sequencer.RowAddress` latency, then the info FIFO with its registered output):
    ``4 + max(lanes, latency + 2)``."""
    return 4 + max(config.lanes, len(RowAddress.stages(config)) + 3)


#: Cycles of a run outside its layers: START to the first layer (the first descriptor
#: fetch, one RAM word per field; later descriptors are prefetched) and the end.
RUN_OVERHEAD = len(FIELDS) + 6


def layer_ideal_cycles(spec: LayerSpec, config: SDConfig, batch: int = 1) -> int:
    """Ideal MAC cycles: ``sum over groups of kept rows x output positions``."""
    positions = batch * (1 if spec.kind == "linear" else spec.out_shape[1] * spec.out_shape[2])
    return int(sum(spec.kept_rows)) * positions


@dataclass
class Program:
    """A compiled network: descriptor words, activation layouts, memory checks.

    Attributes
    ----------
    config : SDConfig
    layers : list of LayerSpec
    batch : int
    descriptors : list of dict
        Field values per layer (before encoding).
    inputs : list of ActLayout
        ``inputs[i]`` is layer ``i``'s input; ``inputs[n]`` the network output.
    """

    config: SDConfig
    layers: list
    batch: int
    descriptors: list = field(default_factory=list)
    inputs: list = field(default_factory=list)

    @property
    def input_layout(self) -> ActLayout:
        return self.inputs[0]

    @property
    def output_layout(self) -> ActLayout:
        return self.inputs[-1]

    def descriptor_words(self) -> list[tuple[int, int]]:
        """``(word index in the descriptor RAM, value)`` for every field of every layer."""
        out = []
        for i, fields in enumerate(self.descriptors):
            for k, (name, _, _) in enumerate(FIELDS):
                out.append((i * DESC_SLOT_WORDS + k, encode_field(self.config, name,
                                                                  fields[name])))
        return out

    def ideal_cycles(self, fill: bool = False) -> list[int]:
        """Ideal cycles per layer of one START (kept rows x positions); with ``fill`` plus
        the pipeline fill: `ACTIVATION_FILL` per layer and `first_layer_fill` for the
        first.  The run adds `RUN_OVERHEAD` outside the layers."""
        ideal = [layer_ideal_cycles(s, self.config, self.batch) for s in self.layers]
        if not fill:
            return ideal
        out = [i + ACTIVATION_FILL for i in ideal]
        out[0] += first_layer_fill(self.config)
        return out


def _conv_fields(spec: LayerSpec, cfg: SDConfig) -> dict:
    S, L = cfg.basis_size, cfg.lanes
    cout, cin, kh, kw = (int(v) for v in spec.weight_shape)
    c_in, h, w = (int(v) for v in spec.in_shape)
    if c_in != cin:
        raise ValueError(f"layer {spec.name}: input has {c_in} channels, weight expects {cin}")
    if kw % S:
        raise ValueError(f"layer {spec.name}: kernel width {kw} is not a multiple of S={S}; "
                         f"the window generator reads S consecutive pixels of one kernel "
                         f"row per cycle")
    sy, sx = (int(v) for v in spec.stride)
    py, px = (int(v) for v in spec.padding)
    if sy < 1 or sx < 1 or py < 0 or px < 0:
        raise ValueError(f"layer {spec.name}: bad stride {spec.stride} / padding {spec.padding}")
    ho, wo = (h + 2 * py - kh) // sy + 1, (w + 2 * px - kw) // sx + 1
    if (cout, ho, wo) != tuple(int(v) for v in spec.out_shape):
        raise ValueError(f"layer {spec.name}: output shape {spec.out_shape} does not follow "
                         f"from the geometry ({cout}, {ho}, {wo})")
    wq = _ceil(w, S)
    kws = kw // S
    return dict(CIN=cin, IN_H=h, IN_W=w, IN_WLAST=w, IN_WQ=wq, IN_CGP=h * wq,
                KWS=kws, RPC=kh * kws, STRIDE_X=sx, STRIDE_Y=sy, PAD_X=px, PAD_Y=py,
                OUT_H=ho, OUT_W=wo, R=cin * kh * kws)


def _linear_fields(spec: LayerSpec, cfg: SDConfig) -> dict:
    S = cfg.basis_size
    cout, n = (int(v) for v in spec.weight_shape)
    if int(np.prod(spec.in_shape)) != n:
        raise ValueError(f"layer {spec.name}: input has {int(np.prod(spec.in_shape))} "
                         f"elements, weight expects {n}")
    r = _ceil(n, S)
    return dict(CIN=r, IN_H=1, IN_W=S, IN_WLAST=n - (r - 1) * S, IN_WQ=1, IN_CGP=1,
                KWS=1, RPC=1, STRIDE_X=1, STRIDE_Y=1, PAD_X=0, PAD_Y=0, OUT_H=1, OUT_W=1,
                R=r)


def _in_layout_kind(spec: LayerSpec) -> str:
    return "vector" if spec.kind == "linear" else "fmap"


def compile_network(layers: Sequence[LayerSpec], config: SDConfig, batch: int = 1,
                    kind: str = "sd") -> Program:
    """Descriptors and activation plan for ``layers`` run back to back from one start.

    Parameters
    ----------
    layers : sequence of LayerSpec
    config : SDConfig
    batch : int
        Items processed by one start (positions = batch x output pixels).
    kind : {"sd", "dense"}
        Which weight path the placements refer to.

    Raises
    ------
    ValueError
        If a layer does not fit the configuration (rows, channels, kernel width,
        descriptor field widths, memory depths, activation banks), naming the layer.
    """
    cfg = config
    S, L = cfg.basis_size, cfg.lanes
    if not layers:
        raise ValueError("a program needs at least one layer")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    geo = []
    for spec in layers:
        if spec.kind not in ("conv2d", "linear"):
            raise ValueError(f"layer {spec.name}: unsupported kind {spec.kind!r}")
        geo.append(_conv_fields(spec, cfg) if spec.kind == "conv2d"
                   else _linear_fields(spec, cfg))
    # activation tensors: input of each layer, then the network output (feature map)
    tensors = []
    for spec in layers:
        if spec.kind == "linear":
            n = int(spec.weight_shape[1])
            tensors.append(("vector", (n,), _vector_words(n, L, S)))
        else:
            shp = tuple(int(v) for v in spec.in_shape)
            tensors.append(("fmap", shp, _fmap_words(shp, L, S)))
    last = layers[-1]
    out_shape = ((last.cout, 1, 1) if last.kind == "linear"
                 else tuple(int(v) for v in last.out_shape))
    tensors.append(("fmap", out_shape, _fmap_words(out_shape, L, S)))
    for i in range(1, len(layers)):
        prev, spec = layers[i - 1], layers[i]
        prev_n = int(np.prod(prev.out_shape))
        need = int(np.prod(tensors[i][1]))
        if prev_n != need:
            raise ValueError(f"layer {spec.name} takes {need} inputs but {prev.name} "
                             f"produces {prev_n}")
        if spec.kind == "conv2d" and prev.kind == "linear":
            raise ValueError(f"layer {spec.name}: a convolution after a fully connected "
                             f"layer is not supported")
    # ping-pong regions: even tensors in region A, odd ones in region B
    size = [0, 0]
    for i, (_, _, words) in enumerate(tensors):
        size[i % 2] = max(size[i % 2], words * batch)
    depth = act_bank_depth(cfg)
    if size[0] + size[1] > depth:
        raise ValueError(f"activations need {size[0]} + {size[1]} words per bank (batch "
                         f"{batch}) but each bank has {depth} (act_depth={cfg.act_depth}); "
                         f"use a smaller batch or a larger act_depth")
    bases = [0, size[0]]
    layouts = [ActLayout(k, shp, bases[i % 2], words, L, S)
               for i, (k, shp, words) in enumerate(tensors)]

    prog = Program(cfg, list(layers), batch, inputs=layouts)
    for i, (spec, gf) in enumerate(zip(layers, geo)):
        r = gf["R"]
        if r > cfg.max_rows:
            raise ValueError(f"layer {spec.name}: {r} rows per filter exceed max_rows="
                             f"{cfg.max_rows}")
        n_groups = _ceil(spec.cout, L)
        if n_groups > cfg.max_groups or spec.cout > cfg.quant_depth:
            raise ValueError(f"layer {spec.name}: {spec.cout} output channels exceed the "
                             f"configuration (quant_depth={cfg.quant_depth})")
        wbase, wwords = (int(v) for v in spec.weights)
        if wwords < 1 or wbase + wwords > cfg.ce_depth:
            raise ValueError(f"layer {spec.name}: weight words [{wbase}, {wbase + wwords}) "
                             f"do not fit the {cfg.ce_depth}-word weight memory")
        bbase = int(spec.basis[0])
        if kind == "sd" and bbase + int(spec.basis[1]) > cfg.basis_depth:
            raise ValueError(f"layer {spec.name}: basis words exceed basis_depth="
                             f"{cfg.basis_depth}")
        qbase = int(spec.quant[0])
        if qbase + spec.cout > cfg.quant_depth:
            raise ValueError(f"layer {spec.name}: quant words exceed quant_depth="
                             f"{cfg.quant_depth}")
        inp, out = layouts[i], layouts[i + 1]
        ho, wo = gf["OUT_H"], gf["OUT_W"]
        scatter = out.kind == "vector"
        positions = batch * ho * wo
        tile = min(cfg.acc_depth, positions)
        n_tiles = _ceil(positions, tile)
        px, py = gf["PAD_X"], gf["PAD_Y"]
        flags = ((FLAG_RELU if spec.relu else 0) | (FLAG_SCATTER if scatter else 0)
                 | (FLAG_PRELOAD if kind == "sd" and spec.preload else 0))
        out_wq = _ceil(wo, S)
        fields = dict(
            FLAGS=flags, CE_BASE=wbase, CE_WORDS=wwords, BASIS_BASE=bbase,
            QUANT_BASE=qbase, N_GROUPS=n_groups, N_ROWS=r,
            N_BLOCKS=_ceil(r, cfg.block_rows) if kind == "sd" else 1,
            COUT=spec.cout, CIN=gf["CIN"], IN_H=gf["IN_H"], IN_W=gf["IN_W"],
            IN_WLAST=gf["IN_WLAST"], IN_WQ=gf["IN_WQ"], IN_BASE=inp.base,
            IN_PITCH=inp.pitch, IN_CGP=gf["IN_CGP"], KWS=gf["KWS"], RPC=gf["RPC"],
            RPC_L=gf["RPC"] * L, LAST_ROW=(gf["CIN"] - 1) * gf["RPC"],
            STRIDE_X=gf["STRIDE_X"], STRIDE_Q=gf["STRIDE_X"] // S,
            STRIDE_M=gf["STRIDE_X"] % S, STRIDE_Y=gf["STRIDE_Y"],
            NEG_PAD_X=-px, PAD_Q=(-px) // S, PAD_M=(-px) % S, NEG_PAD_Y=-py,
            LINE0=-py * gf["IN_WQ"], LINE_STEP=gf["STRIDE_Y"] * gf["IN_WQ"],
            OUT_H=ho, OUT_W=wo, BATCH=batch, OUT_BASE=out.base, OUT_PITCH=out.pitch,
            OUT_WQ=out_wq, OUT_CGP=ho * out_wq, OUT_HW=ho * wo,
            TILE=tile, N_TILES=n_tiles, LAST_TILE=positions - (n_tiles - 1) * tile,
            BASIS_GSTEP=(_ceil(r, cfg.block_rows) if kind == "sd" else 1) * L,
            # Scatter counters add these digit steps (element f = (q*L + l)*S + s).
            HW_Q=ho * wo // (S * L), HW_L=(ho * wo // S) % L, HW_S=ho * wo % S,
            GHW_Q=L * ho * wo // (S * L), GHW_L=(L * ho * wo // S) % L, GHW_S=L * ho * wo % S,
        )
        for name, value in fields.items():
            try:
                encode_field(cfg, name, int(value))
            except ValueError as exc:
                raise ValueError(f"layer {spec.name}: {exc}") from None
        prog.descriptors.append(fields)
    return prog


def specs_from_qnet(qnet, placements, kind: str = "sd") -> list[LayerSpec]:
    """`LayerSpec` list of a `golden.qnet.QNet` with `golden.pack.LayerPlacement`\\ s.

    For ``kind="dense"`` the placements are ``(weights, quant)`` pairs of
    ``(base, words)`` (see `golden.dense_baseline`).
    """
    specs = []
    for lay, pl in zip(qnet.layers, placements):
        if kind == "sd":
            weights, basis, quant = pl.ce, pl.basis, pl.quant
            kept = tuple(int(k) for k in lay.sd.kept_rows())
            # A group without kept rows still costs one (empty) row pass.
            kept = tuple(max(1, k) for k in kept)
            first = np.flatnonzero(lay.sd.row_keep[0].numpy())
            # an empty group 0 emits one row of block 0
            preload = first.size == 0 or int(first[0]) < lay.config.block_rows
        else:
            weights, quant = pl["weights"], pl["quant"]
            basis = (0, 0)
            kept = tuple([lay.sd.rows] * lay.sd.n_groups)
            preload = False
        specs.append(LayerSpec(
            name=lay.name, kind=lay.kind, weight_shape=tuple(lay.weight_shape),
            in_shape=tuple(lay.in_shape), out_shape=tuple(lay.out_shape),
            stride=tuple(lay.stride), padding=tuple(lay.padding), relu=bool(lay.relu),
            weights=tuple(weights), basis=tuple(basis), quant=tuple(quant),
            kept_rows=kept, preload=bool(preload)))
    return specs
