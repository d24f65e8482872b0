"""The SmartDeal accelerator top level: memories, datapath, controller, host interface.

`SDAccelerator(config)` is the whole accelerator a user integrates: an AXI4-Lite slave
for control and status, an AXI4-Stream slave to load memories and request reads, an
AXI4-Stream master for the data read back, and ``irq``.  Behind them:

* memories sized from `SDConfig`: Ce (``ce_depth x ce_word_width``), basis
  (``basis_depth x basis_word_bits``), quant (``quant_depth x quant_word_bits``),
  ``S`` activation banks (``ceil(act_depth / lanes)`` words of ``lanes x act_bits``),
  and the descriptor RAM (``max_layers x 64`` words of 32 bits);
* the layer datapath (`hw.datapath.LayerDatapath`) and the layer controller
  (`hw.controller.LayerController`), which runs every descriptor from one start.

Weight memories are filled in one of three ways (``docs/architecture.md``): baked
(``init={"ce": words, ...}``), from ``$readmemh`` files named at generation
(``init_files={"ce": "ce.hex", ...}``; the files may change without new Verilog), or at
run time through the stream port.  `AcceleratorTop` is shared with the dense baseline
(``hw/dense_top.py``), which swaps the weight path and keeps everything else.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping

from amaranth import Cat, Module, Mux, ResetInserter, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.config import SDConfig
from hw.controller import DEFAULT_MAX_LAYERS, DEFAULT_WATCHDOG, LayerController
from hw.datapath import LayerDatapath, weight_word_bits
from hw.descriptor import DESC_SLOT_WORDS, act_bank_depth, geometry
from hw.dsp import SD_MUL_FILE, SD_MUL_VERILOG
from hw.host import ID_DENSE, ID_SD, Counter, HostInterface, MemId
from hw.memories import SyncRAM, collect_verilog_sources

__all__ = ["AcceleratorTop", "SDAccelerator", "memory_map", "EXTERNAL_PORTS"]

#: Prefixes of the members of `HostInterface` that are the accelerator's own ports.
EXTERNAL_PORTS = ("s_axil_", "s_axis_", "m_axis_", "irq")


def memory_map(config: SDConfig, kind: str = "sd") -> dict[str, dict]:
    """Memories of accelerator ``kind``: name -> ``{"id", "width", "depth"}``.

    ``depth`` is the address range the stream port accepts; for the activation memory the
    address is ``bank << act_bank_shift | word``.
    """
    g = geometry(config)
    mm = {"weights": {"id": int(MemId.WEIGHTS), "width": weight_word_bits(config, kind),
                      "depth": config.ce_depth},
          "quant": {"id": int(MemId.QUANT), "width": config.quant_word_bits,
                    "depth": config.quant_depth},
          "act": {"id": int(MemId.ACT), "width": config.lanes * config.act_bits,
                  "depth": config.basis_size << g.act, "bank_depth": act_bank_depth(config),
                  "banks": config.basis_size, "bank_shift": g.act}}
    if kind == "sd":
        mm["basis"] = {"id": int(MemId.BASIS), "width": config.basis_word_bits,
                       "depth": config.basis_depth}
    return mm


def _check_images(config: SDConfig, kind: str, images, what: str) -> dict:
    if images is None:
        return {}
    if not isinstance(images, Mapping):
        raise TypeError(f"{what} must be a mapping of memory name to contents, "
                        f"got {type(images).__name__}")
    names = {"sd": ("ce", "basis", "quant"), "dense": ("dense", "quant")}[kind]
    unknown = sorted(set(images) - set(names))
    if unknown:
        raise ValueError(f"{what}: unknown memory name(s) {unknown}; the {kind} "
                         f"accelerator has {list(names)}")
    return dict(images)


class AcceleratorTop(wiring.Component):
    """Accelerator of kind ``"sd"`` or ``"dense"`` with the host interface as its ports.

    Parameters
    ----------
    config : SDConfig
    kind : {"sd", "dense"}
    init : mapping, optional
        Baked weight-memory contents: ``{"ce"|"dense": words, "basis": words,
        "quant": words}`` (lists of ints, at most the memory depth).
    init_files : mapping, optional
        ``$readmemh`` file names of the same memories (the ``sd_ram`` module,
        `verilog_sources`).  A memory named in neither starts empty.
    max_layers : int
        Descriptor slots.
    watchdog : int
        Reset value of the WATCHDOG register.

    Attributes
    ----------
    s_axil_* : AXI4-Lite slave (16-bit byte addresses, 32-bit data)
    s_axis_tdata/tvalid/tready/tlast : AXI4-Stream slave, 32 bits
    m_axis_tdata/tvalid/tready/tlast : AXI4-Stream master, 32 bits
    irq : Out(1)
        High while STATUS.DONE or STATUS.ERROR is set.
    """

    def __init__(self, config: SDConfig, kind: str = "sd", *, init=None, init_files=None,
                 max_layers: int = DEFAULT_MAX_LAYERS, watchdog: int = DEFAULT_WATCHDOG):
        if not isinstance(config, SDConfig):
            raise TypeError(f"config must be an SDConfig, got {type(config).__name__}: "
                            f"{config!r}")
        if kind not in ("sd", "dense"):
            raise ValueError(f"kind must be 'sd' or 'dense', got {kind!r}")
        self.config, self.kind = config, kind
        self.init = _check_images(config, kind, init, "init")
        self.init_files = _check_images(config, kind, init_files, "init_files")
        both = sorted(set(self.init) & set(self.init_files))
        if both:
            raise ValueError(f"memories {both} are given both baked contents and an init file")
        self.max_layers = max_layers
        self.watchdog = watchdog
        self._host_proto = self._make_host()
        members = {name: mem for name, mem in self._host_proto.signature.members.items()
                   if name.startswith(EXTERNAL_PORTS)}
        super().__init__(members)
        self._mems = self._make_memories()

    # ---------------------------------------------------------------------- building
    def _make_host(self) -> HostInterface:
        mm = memory_map(self.config, self.kind)
        mems = {v["id"]: (v["width"], v["depth"]) for v in mm.values()}
        return HostInterface(self.config, mems, ID_SD if self.kind == "sd" else ID_DENSE,
                             self.max_layers, watchdog_default=self.watchdog)

    def _ram(self, name: str, width: int, depth: int, **kw) -> SyncRAM:
        return SyncRAM(width, depth, init=self.init.get(name),
                       init_file=self.init_files.get(name), name=name, **kw)

    def _make_memories(self) -> dict[str, SyncRAM]:
        cfg = self.config
        wname = "ce" if self.kind == "sd" else "dense"
        mems = {"weights": self._ram(wname, weight_word_bits(cfg, self.kind), cfg.ce_depth),
                "quant": self._ram("quant", cfg.quant_word_bits, cfg.quant_depth)}
        if self.kind == "sd":
            mems["basis"] = self._ram("basis", cfg.basis_word_bits, cfg.basis_depth)
        for j in range(cfg.basis_size):
            # a layer reads its input region and writes its output region, placed apart
            # (`hw.program` ping-pong), and the host uses the banks only while idle
            mems[f"act{j}"] = SyncRAM(cfg.lanes * cfg.act_bits, act_bank_depth(cfg),
                                      granularity=cfg.act_bits, name=f"act{j}",
                                      collision_free=True)
        return mems

    @property
    def verilog_sources(self) -> dict[str, str]:
        """Extra Verilog files: ``sd_mul.v`` (the MAC lanes' registered multipliers,
        `hw.dsp`) and ``sd_ram.v`` when a memory is the ``sd_ram`` module."""
        return {SD_MUL_FILE: SD_MUL_VERILOG, **collect_verilog_sources(*self._mems.values())}

    # --------------------------------------------------------------------- elaborate
    def elaborate(self, platform):
        cfg = self.config
        S = cfg.basis_size
        g = geometry(cfg)
        m = Module()
        host = self._host_proto
        m.submodules.host = host
        m.submodules.ctrl = ctrl = LayerController(cfg, self.max_layers)
        dp = LayerDatapath(cfg, self.kind)
        m.submodules.datapath = ResetInserter(ctrl.flush)(dp)
        mems = self._mems
        for name, ram in mems.items():
            m.submodules[f"mem_{name}"] = ram

        # external ports <-> host interface
        for name, member in self.signature.members.items():
            if member.flow == In:
                m.d.comb += getattr(host, name).eq(getattr(self, name))
            else:
                m.d.comb += getattr(self, name).eq(getattr(host, name))

        # descriptor RAM: host writes, controller and host read
        # Two copies (the FPGA way to get a second read port), written together.
        depth = self.max_layers * DESC_SLOT_WORDS
        m.submodules.desc_ctrl = dr_ctrl = SyncRAM(32, depth, name="desc_ctrl")
        m.submodules.desc_host = dr_host = SyncRAM(32, depth, name="desc_host")
        for ram in (dr_ctrl, dr_host):
            m.d.comb += [ram.w_addr.eq(host.desc_w_addr), ram.w_data.eq(host.desc_w_data),
                         ram.w_en.eq(host.desc_w_en)]
        m.d.comb += [dr_ctrl.r_addr.eq(ctrl.desc_r_addr), dr_ctrl.r_en.eq(ctrl.desc_r_en),
                     ctrl.desc_r_data.eq(dr_ctrl.r_data),
                     dr_host.r_addr.eq(host.desc_r_addr), dr_host.r_en.eq(host.desc_r_en),
                     host.desc_r_data.eq(dr_host.r_data)]

        # controller <-> host, datapath
        m.d.comb += [
            ctrl.start.eq(host.start), ctrl.abort.eq(host.abort),
            ctrl.n_layers.eq(host.n_layers), ctrl.watchdog.eq(host.watchdog),
            host.busy.eq(ctrl.busy), host.done.eq(ctrl.done), host.error.eq(ctrl.error),
            host.error_code.eq(ctrl.error_code), host.error_layer.eq(ctrl.error_layer),
            host.layer.eq(ctrl.layer), host.cycles.eq(ctrl.cycles),
            host.err_count.eq(ctrl.err_count), host.layer_cycles.eq(ctrl.layer_cycles),
            dp.desc_w.eq(ctrl.desc_w), dp.w_start.eq(ctrl.w_start), ctrl.w_idle.eq(dp.w_idle),
            dp.desc_a.eq(ctrl.desc_a), dp.a_start.eq(ctrl.a_start),
            ctrl.layer_done.eq(dp.layer_done), ctrl.progress.eq(dp.progress),
            ctrl.dp_error.eq(dp.error), ctrl.dp_error_code.eq(dp.error_code),
        ]

        # event counters (cleared by START / CLEAR_COUNTERS, counted while busy)
        n_ev = len(Counter)
        counters = [Signal(32, name=f"count_{c.name.lower()}") for c in Counter]
        incr = [dp.events[i] for i in range(8)]
        # S bank words per read; a Mux, not a multiply (DSP blocks are for the MAC lanes)
        incr[Counter.ACT_READS] = Mux(dp.events[Counter.ACT_READS], S, 0)
        stall = Signal()
        m.d.comb += stall.eq(~dp.events[Counter.MAC_OPS])
        incr.append(stall)
        # The events are registered first (cut from the datapath's handshakes, which
        # would otherwise chain into the 32-bit adders); a cycle's events are counted
        # one cycle later, with the same rule: while busy, not in a clearing cycle.
        clear = Signal()
        m.d.comb += clear.eq(host.start | host.clear_counters)
        incr_r = [Signal(range(S + 1) if i == Counter.ACT_READS else 1,
                         name=f"event_{c.name.lower()}") for i, c in enumerate(Counter)]
        m.d.sync += [r.eq(Mux(ctrl.busy & ~clear, v, 0)) for r, v in zip(incr_r, incr)]
        with m.If(clear):
            m.d.sync += [c.eq(0) for c in counters]
        with m.Else():
            m.d.sync += [c.eq(c + i) for c, i in zip(counters, incr_r)]
        for i in range(n_ev):
            m.d.comb += host.counters[i].eq(counters[i])

        # memory ports: datapath while busy, host stream otherwise
        busy = ctrl.busy
        wmem, qmem = mems["weights"], mems["quant"]
        read_pairs = [(wmem, dp.w_r_addr, dp.w_r_en, dp.w_r_data, MemId.WEIGHTS),
                      (qmem, dp.q_r_addr, dp.q_r_en, dp.q_r_data, MemId.QUANT)]
        if self.kind == "sd":
            read_pairs.append((mems["basis"], dp.b_r_addr, dp.b_r_en, dp.b_r_data,
                               MemId.BASIS))
        # Host reads: every block RAM output goes straight into a register of its own
        # (the late RAM data meets no logic), then an AND-OR with the registered one-hot
        # select (set with the read) feeds the host's word register: the data reaches the
        # host two cycles after the read.
        r_sel = Signal(len(read_pairs) + S)
        host_rd = []

        def hold(v):
            q = Signal(len(v), name=f"host_q{len(host_rd)}")
            m.d.sync += q.eq(v)
            return q
        for ram, addr, en, rdata, mid in read_pairs:
            m.d.comb += rdata.eq(ram.r_data)
            with m.If(busy):
                m.d.comb += [ram.r_addr.eq(addr), ram.r_en.eq(en)]
            with m.Else():
                m.d.comb += [ram.r_addr.eq(host.mem_r_addr),
                             ram.r_en.eq(host.mem_r_en & (host.mem_r_id == mid))]
            with m.If(host.mem_r_en):
                m.d.sync += r_sel[len(host_rd)].eq(host.mem_r_id == mid)
            host_rd.append(Mux(r_sel[len(host_rd)], hold(ram.r_data), 0))
            # weight memories are written only by the host
            m.d.comb += [ram.w_addr.eq(host.mem_w_addr), ram.w_data.eq(host.mem_w_data),
                         ram.w_en.eq(host.mem_w_en & (host.mem_w_id == mid) & ~busy)]
        for j in range(S):
            ram = mems[f"act{j}"]
            m.d.comb += dp.act_rd_data[j].eq(ram.r_data)
            host_sel = (host.mem_r_addr[g.act:] == j) & (host.mem_r_id == MemId.ACT)
            host_wsel = (host.mem_w_addr[g.act:] == j) & (host.mem_w_id == MemId.ACT)
            # The datapath's writes reach the bank through one register: the writer's
            # address and data logic and the block RAM's write port sit far apart (the
            # slowest path after the other fixes).  The writer pulses ``done`` the cycle
            # after its last write and the next layer reads two or more cycles after
            # that, so the delayed write always lands first; the host writes only while
            # idle, long after the run's last write.
            wq_addr = Signal.like(dp.act_wr_addr[j], name=f"act{j}_wq_addr")
            wq_data = Signal.like(dp.act_wr_data[j], name=f"act{j}_wq_data")
            wq_en = Signal.like(dp.act_wr_en[j], name=f"act{j}_wq_en")
            m.d.sync += [wq_addr.eq(dp.act_wr_addr[j]), wq_data.eq(dp.act_wr_data[j]),
                         wq_en.eq(Mux(busy, dp.act_wr_en[j], 0))]
            with m.If(busy):
                m.d.comb += [ram.r_addr.eq(dp.act_rd_addr[j]), ram.r_en.eq(dp.act_rd_en)]
            with m.Else():
                m.d.comb += [ram.r_addr.eq(host.mem_r_addr[:g.act]),
                             ram.r_en.eq(host.mem_r_en & host_sel)]
            with m.If(wq_en.any()):
                m.d.comb += [ram.w_addr.eq(wq_addr), ram.w_data.eq(wq_data),
                             ram.w_en.eq(wq_en)]
            with m.Else():
                m.d.comb += [ram.w_addr.eq(host.mem_w_addr[:g.act]),
                             ram.w_data.eq(host.mem_w_data),
                             ram.w_en.eq(Cat(*[host.mem_w_en & host_wsel & ~busy]
                                             * cfg.lanes))]
            with m.If(host.mem_r_en):
                m.d.sync += r_sel[len(host_rd)].eq(host_sel)
            host_rd.append(Mux(r_sel[len(host_rd)], hold(ram.r_data), 0))
        m.d.comb += host.mem_r_data.eq(functools.reduce(operator.or_, host_rd))
        return m


class SDAccelerator(AcceleratorTop):
    """The SmartDeal accelerator (`AcceleratorTop` of kind ``"sd"``)."""

    def __init__(self, config: SDConfig, **kwargs):
        super().__init__(config, "sd", **kwargs)
