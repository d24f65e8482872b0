"""FPGA report: results of `fpga.flow.run_flow` as JSON, markdown tables and one plot.

The runs of one report come from one invocation (same tools, same sources), so the SD
accelerator and the dense baseline are compared side by side on equal terms.  A run
whose status is ``failed`` is shown as FAILED with its error and never contributes a
figure or a passed check.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Check", "block_groups", "markdown", "write_json", "plot", "run_row", "fmt"]

#: Report groups of the accelerator's blocks, matched against the per-block paths of
#: the hierarchical synthesis (first match wins; a path matches a pattern when the pattern
#: is one of its dot-separated parts or the start of the last one).
GROUPS = (
    ("decoder", ("decoder",)),
    ("basis array", ("basis_array",)),
    ("dense reader", ("reader", "dense_reader")),
    ("MAC lanes", ("mac", "mac_lanes")),
    ("host interface", ("host", "bridge")),
    ("control", ("ctrl", "controller", "seq", "sequencer")),
    ("memories", ("mem", "ram", "desc_ram")),
)


@dataclass(frozen=True)
class Check:
    """One must-reach target: measured value against a bound."""

    name: str
    value: "float | None"
    bound: float
    kind: str          #: ">=" or "<="
    detail: str = ""

    @property
    def status(self) -> str:
        if self.value is None:
            return "FAILED (no result)"
        ok = self.value >= self.bound if self.kind == ">=" else self.value <= self.bound
        return "pass" if ok else "MISSED"

    def as_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "bound": self.bound,
                "kind": self.kind, "status": self.status, "detail": self.detail}


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _matches(path: str, patterns) -> bool:
    last = path.split(".")[-1]
    return any(last == p or last.startswith(p + "_") for p in patterns)


def block_groups(blocks: dict) -> dict[str, dict[str, int]]:
    """Sum the per-block figures of one run into `GROUPS`.

    A block belongs to the first group one of its path parts matches; a block inside an
    already counted block is not counted again.  ``memories`` collects every block RAM
    wherever it sits (Amaranth places a memory inside the module that declares it), so
    BRAM and SPRAM appear once, under memories; ``other`` holds the blocks of no group and
    the top's own logic.  Blocks are synthesized alone, so the groups add up to a little
    more than the flattened design total (no optimisation across block ports).
    """
    if not blocks:
        return {}
    total = blocks["(total)"]
    out = {name: {k: 0 for k in total} for name, _ in GROUPS}
    counted: list[str] = []
    for path in sorted((p for p in blocks if not p.startswith("(")), key=lambda p: p.count(".")):
        if any(path.startswith(c + ".") for c in counted):
            continue
        for name, patterns in GROUPS:
            if _matches(path, patterns):
                for k, v in blocks[path].items():
                    out[name][k] += v
                counted.append(path)
                break
    for name, _ in GROUPS:
        if name != "memories":
            for k in ("bram", "spram"):
                out[name][k] = 0
    for k in ("bram", "spram"):
        out["memories"][k] = total.get(k, 0)
    # Everything else: blocks of no group, and the top's own logic.
    rest = [p for p in blocks if not p.startswith("(") and p not in counted
            and not any(p.startswith(c + ".") for c in counted)]
    out["other"] = {k: sum(blocks[p][k] for p in rest) + blocks.get("(top logic)", {}).get(k, 0)
                    for k in total}
    for k in ("bram", "spram"):
        out["other"][k] = 0
    return {name: v for name, v in out.items() if any(v.values())}


def run_row(r: dict) -> dict:
    """Flat figures of one run for tables (None for a failed run)."""
    ok = r.get("status") == "ok"
    util = r.get("pnr", {}).get("utilisation", {}) if ok else {}
    total = (r.get("blocks") or {}).get("(total)", {}) if ok else {}
    return {
        "status": r.get("status", "failed"),
        "fmax": r.get("fmax_mhz") if ok else None,
        "target": r.get("target_mhz"),
        "lut": total.get("lut") if total else (util.get("lut", {}).get("used") if ok else None),
        "ff": total.get("ff") if total else (util.get("ff", {}).get("used") if ok else None),
        "bram": util.get("bram", {}).get("used") if ok else None,
        "dsp": util.get("dsp", {}).get("used") if ok else None,
        "spram": util.get("spram", {}).get("used") if ok else None,
        "pnr_lut": util.get("lut", {}).get("used") if ok else None,
        "pnr_lut_avail": util.get("lut", {}).get("available") if ok else None,
        "seconds": r.get("seconds"),
        "error": r.get("error"),
    }


def write_json(path: "str | Path", runs: list, checks: list, extra: "dict | None" = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"generated": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": runs,
           "checks": [c.as_dict() for c in checks], **(extra or {})}
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return out


def comparison_table(pairs: list[tuple[str, dict, "dict | None"]]) -> list[str]:
    """SD vs dense, side by side: one row per (label, sd run, dense run)."""
    header = ["build", "device", "status SD / dense", "Fmax MHz SD / dense", "LUT SD / dense",
              "FF SD / dense", "BRAM SD / dense", "DSP SD / dense", "run time s SD / dense"]
    rows = []
    for label, sd, dense in pairs:
        a = run_row(sd)
        b = run_row(dense) if dense else {k: None for k in a}

        def pair(key):
            return f"{fmt(a[key])} / {fmt(b[key])}" if dense else fmt(a[key])
        rows.append([label, sd["device"],
                     f"{a['status']} / {b['status']}" if dense else a["status"],
                     pair("fmax"), pair("lut"), pair("ff"), pair("bram"), pair("dsp"),
                     pair("seconds")])
    return _table(header, rows)


def blocks_table(sd: dict, dense: "dict | None") -> list[str]:
    """Per-block LUT / FF / BRAM / DSP of one SD run next to its dense baseline."""
    g_sd = block_groups(sd.get("blocks") or {})
    g_dn = block_groups(dense.get("blocks") or {}) if dense else {}
    names = list(dict.fromkeys([*g_sd, *g_dn]))
    rows = []
    for n in names:
        a, b = g_sd.get(n), g_dn.get(n)
        rows.append([n, *(f"{fmt(a[k]) if a else '-'} / {fmt(b[k]) if b else '-'}"
                          for k in ("lut", "ff", "bram", "dsp"))])
    t_sd = (sd.get("blocks") or {}).get("(total)")
    t_dn = ((dense or {}).get("blocks") or {}).get("(total)")
    rows.append(["design, flattened", *(f"{fmt(t_sd[k]) if t_sd else '-'} / "
                                        f"{fmt(t_dn[k]) if t_dn else '-'}"
                                        for k in ("lut", "ff", "bram", "dsp"))])
    return _table(["block", "LUT SD / dense", "FF SD / dense", "BRAM SD / dense",
                   "DSP SD / dense"], rows)


def critical_path_lines(r: dict) -> list[str]:
    if r.get("status") != "ok":
        return [f"- {r['design']} on {r['device']}: FAILED: {r.get('error')}"]
    cp = r["pnr"].get("critical_path")
    if not cp:
        return [f"- {r['design']} on {r['device']}: no register-to-register path reported"]
    src = ", ".join(cp["sources"][:6]) or "no source lines kept by synthesis"
    return [f"- {r['design']} on {r['device']} ({fmt(r['fmax_mhz'])} MHz): "
            f"{cp['delay_ns']:.2f} ns = {cp['logic_ns']:.2f} ns logic + "
            f"{cp['routing_ns']:.2f} ns routing, {cp['logic_stages']} logic stages, "
            f"`{cp['from']}` -> `{cp['to']}`, through {' -> '.join(cp['blocks'])}; "
            f"HDL: {src}"]


def markdown(title: str, intro: list[str], sections: list[tuple[str, list[str]]]) -> str:
    lines = [f"# {title}", "", *intro, ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", *body, ""]
    return "\n".join(lines).rstrip() + "\n"


def plot(path: "str | Path", pairs: list[tuple[str, dict, "dict | None"]]) -> "Path | None":
    """Grouped bars: LUT, FF, BRAM, DSP as % of the device, SD next to dense, Fmax on top."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = ("lut", "ff", "bram", "dsp")
    panels = [(label, sd, dn) for label, sd, dn in pairs if sd.get("status") == "ok"]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (label, sd, dn) in zip(axes[0], panels):
        for offset, run, name, color in ((-0.2, sd, "SD", "tab:blue"),
                                         (0.2, dn, "dense", "tab:gray")):
            if not run or run.get("status") != "ok":
                continue
            util = run["pnr"]["utilisation"]
            vals = [100.0 * util.get(c, {}).get("used", 0) / max(1, util.get(c, {}).get("available", 0))
                    if util.get(c, {}).get("available") else 0.0 for c in cats]
            ax.bar([i + offset for i in range(len(cats))], vals, width=0.4, color=color,
                   label=f"{name}: {run['fmax_mhz']:.0f} MHz")
        ax.set_xticks(range(len(cats)), [c.upper() for c in cats])
        ax.set_ylabel("% of device")
        ax.set_title(f"{label} on {sd['device']}", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
