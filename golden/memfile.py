"""Memory initialisation files: writers and readers for every format users load.

A memory image is a list of non-negative Python ints, one per word, each below
``2 ** width``.  Every format here round-trips such an image exactly; every reader
also accepts what the vendor's documented syntax allows (comments, address markers,
radix keywords, address ranges) and reports malformed input as a `MemFileError`
that names the file, the line (or byte offset / array key) and what was expected.

Formats (key -> file suffix):

========  ========  ===============================================================
key       suffix    syntax
========  ========  ===============================================================
``hex``   ``.hex``  Verilog ``$readmemh``: hex words, ``@addr`` markers, ``//`` and
                    ``/* */`` comments, ``_`` allowed inside numbers
``memb``  ``.memb`` Verilog ``$readmemb``: the same with binary words
``coe``   ``.coe``  Xilinx COE: ``memory_initialization_radix=2|10|16;``
                    ``memory_initialization_vector=w0, w1 ...;`` and ``;`` comment lines
``mem``   ``.mem``  Xilinx updatemem MEM: ``@ADDR`` then hex words, no ``0x``,
                    blocks must not overlap
``mif``   ``.mif``  Intel MIF: ``DEPTH``/``WIDTH``/``ADDRESS_RADIX``/``DATA_RADIX``
                    then ``CONTENT BEGIN ... END;`` with ``a : d;``, ``a : d1 d2;`` and
                    ``[a..b] : d;`` entries, ``--`` and ``% ... %`` comments
``bin``   ``.bin``  raw little-endian, each word padded to whole bytes
``npz``   ``.npz``  numpy archive: ``words`` (n, bytes_per_word) uint8 little-endian,
                    ``width`` scalar
========  ========  ===============================================================

Readers return the words from address 0 up to the highest address the file
defines (a ``.mif`` declares its ``DEPTH`` and returns that many words); addresses a
file skips read as 0, as the vendor tools fill them.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

__all__ = [
    "FORMATS", "MemFileError", "check_words", "words_to_bytes", "bytes_to_words",
    "image_sha256", "write_memory", "read_memory", "format_of",
    "write_readmemh", "read_readmemh", "write_readmemb", "read_readmemb",
    "write_coe", "read_coe", "write_updatemem", "read_updatemem",
    "write_mif", "read_mif", "write_bin", "read_bin", "write_npz", "read_npz",
]

#: format key -> file suffix
FORMATS: dict[str, str] = {
    "hex": ".hex", "memb": ".memb", "coe": ".coe", "mem": ".mem",
    "mif": ".mif", "bin": ".bin", "npz": ".npz",
}


class MemFileError(ValueError):
    """A memory file that cannot be read or written as asked.

    Attributes
    ----------
    path : str
        The file.
    where : str or None
        ``"line N"``, ``"byte N"`` or ``"array 'key'"``; None for whole-file problems.
    reason : str
        What was found and what was expected.
    """

    def __init__(self, path, where, reason: str):
        self.path = str(path)
        self.where = where
        self.reason = reason
        loc = f"{self.path}:{where}" if where else self.path
        super().__init__(f"{loc}: {reason}")


# ----------------------------------------------------------------------- helpers
def _check_width(width: int) -> None:
    if isinstance(width, bool) or not isinstance(width, int):
        raise TypeError(f"word width must be an int, got {width!r}")
    if width < 1:
        raise ValueError(f"word width must be >= 1, got {width}")


def check_words(words: Sequence[int], width: int, depth: int | None = None,
                path="<image>") -> list[int]:
    """Validate an image: ints in ``[0, 2**width)``, at most ``depth`` of them."""
    _check_width(width)
    out = [int(w) for w in words]
    if depth is not None and len(out) > depth:
        raise MemFileError(path, None, f"{len(out)} words do not fit a memory of depth {depth}")
    top = 1 << width
    for addr, w in enumerate(out):
        if not 0 <= w < top:
            raise MemFileError(path, None, f"word {addr} = {w:#x} does not fit {width} bits "
                                           f"(expected 0 <= word < 2**{width})")
    return out


def _nbytes(width: int) -> int:
    return -(-width // 8)


def words_to_bytes(words: Sequence[int], width: int) -> bytes:
    """Little-endian bytes of the image, each word padded to whole bytes."""
    n = _nbytes(width)
    return b"".join(int(w).to_bytes(n, "little") for w in words)


def bytes_to_words(data: bytes, width: int) -> list[int]:
    n = _nbytes(width)
    return [int.from_bytes(data[i:i + n], "little") for i in range(0, len(data), n)]


def image_sha256(words: Sequence[int], width: int) -> str:
    """Canonical checksum of an image: sha256 of its raw ``.bin`` form."""
    return hashlib.sha256(words_to_bytes(words, width)).hexdigest()


def _header_lines(comment: str | None, width: int, n: int, prefix: str) -> list[str]:
    lines = [f"{prefix} {len_line}" for len_line in (comment or "").splitlines() if len_line]
    lines.append(f"{prefix} {n} words of {width} bits")
    return lines


def _digits(width: int, bits_per_digit: int) -> int:
    return -(-width // bits_per_digit)


class _Image:
    """Sparse words collected by a reader, with the checks every reader shares."""

    def __init__(self, path, width: int, depth: int | None, allow_overwrite: bool):
        self.path, self.width, self.depth = path, width, depth
        self.allow_overwrite = allow_overwrite
        self.words: dict[int, int] = {}

    def put(self, addr: int, value: int, where: str) -> None:
        if self.depth is not None and addr >= self.depth:
            raise MemFileError(self.path, where, f"address {addr:#x} is beyond the memory "
                                                 f"depth {self.depth} (expected < {self.depth:#x})")
        if value >= 1 << self.width or value < 0:
            raise MemFileError(self.path, where, f"value {value:#x} does not fit the "
                                                 f"{self.width}-bit word width")
        if not self.allow_overwrite and addr in self.words:
            raise MemFileError(self.path, where, f"address {addr:#x} is defined twice "
                                                 f"(data blocks must not overlap)")
        self.words[addr] = value

    def result(self, length: int | None = None) -> list[int]:
        n = length if length is not None else (max(self.words) + 1 if self.words else 0)
        return [self.words.get(a, 0) for a in range(n)]


def _read_text(path) -> str:
    try:
        return Path(path).read_text(encoding="ascii")
    except UnicodeDecodeError as exc:
        raise MemFileError(path, None, f"not an ASCII text file (byte {exc.start} is "
                                       f"{exc.object[exc.start]:#04x})") from None


def _liner(text: str) -> Callable[[int], str]:
    """Map a character offset of ``text`` to ``"line N"`` (bisect over newlines)."""
    import bisect
    starts = [m.end() for m in re.finditer("\n", text)]
    return lambda pos: f"line {bisect.bisect_right(starts, pos) + 1}"


# ------------------------------------------------------- Verilog $readmemh / $readmemb
_VLOG_TOKEN = re.compile(r"//[^\n]*|/\*.*?\*/|/\*|[^\s/]+|/", re.S)


def _write_vlog(path, words, width, depth, comment, base: int, digit_bits: int,
                what: str) -> None:
    words = check_words(words, width, depth, path)
    nd = _digits(width, digit_bits)
    fmt = (lambda w: format(w, f"0{nd}x")) if base == 16 else (lambda w: format(w, f"0{nd}b"))
    lines = _header_lines(comment, width, len(words), "//")
    lines.append(f"// {what}: one word per line, LSB on the right")
    lines.append("@0")
    lines.extend(fmt(w) for w in words)
    Path(path).write_text("\n".join(lines) + "\n")


def _read_vlog(path, width, depth, base: int, underscores: bool, allow_overwrite: bool,
               slash_block_comments: bool, what: str) -> list[int]:
    _check_width(width)
    text = _read_text(path)
    img = _Image(path, width, depth, allow_overwrite)
    digits = "0-9a-fA-F" if base == 16 else "01"
    value_re = re.compile(f"[{digits}_]+" if underscores else f"[{digits}]+")
    addr = 0
    line_of = _liner(text)
    for m in _VLOG_TOKEN.finditer(text):
        tok, where = m.group(0), line_of(m.start())
        if tok.startswith("//"):
            continue
        if tok == "/":
            raise MemFileError(path, where, "stray '/' (expected '//' or '/*' comment)")
        if tok.startswith("/*"):
            if not slash_block_comments:
                raise MemFileError(path, where, f"unexpected {tok[:2]!r}; {what} allows only "
                                                f"'//' comments")
            if tok == "/*":
                raise MemFileError(path, where, "'/*' comment is never closed (expected '*/')")
            continue
        if tok.startswith("@"):
            body = tok[1:]
            if not re.fullmatch(r"[0-9a-fA-F_]+" if underscores else r"[0-9a-fA-F]+", body):
                raise MemFileError(path, where, f"bad address marker {tok!r} (expected '@' "
                                                f"followed by hex digits)")
            addr = int(body.replace("_", ""), 16)
            continue
        if tok.lower().startswith("0x"):
            raise MemFileError(path, where, f"{tok!r}: the '0x' prefix is not allowed in "
                                            f"{what} (expected bare hex digits)")
        if not value_re.fullmatch(tok) or not tok.strip("_"):
            kind = "hex" if base == 16 else "binary"
            raise MemFileError(path, where, f"{tok!r} is not a {kind} word "
                                            f"(expected {kind} digits"
                                            f"{', _ allowed' if underscores else ''})")
        img.put(addr, int(tok.replace("_", ""), base), where)
        addr += 1
    return img.result()


def write_readmemh(path, words, width, depth=None, comment=None) -> None:
    """Verilog ``$readmemh`` text: ``@0`` then one zero-padded hex word per line."""
    _write_vlog(path, words, width, depth, comment, 16, 4, "$readmemh")


def read_readmemh(path, width, depth=None) -> list[int]:
    """Read ``$readmemh`` text (``@addr`` markers, comments, ``_`` in numbers).

    As ``$readmemh`` does, a later word at an address overwrites an earlier one.
    """
    return _read_vlog(path, width, depth, 16, True, True, True, "$readmemh")


def write_readmemb(path, words, width, depth=None, comment=None) -> None:
    """Verilog ``$readmemb`` text: ``@0`` then one zero-padded binary word per line."""
    _write_vlog(path, words, width, depth, comment, 2, 1, "$readmemb")


def read_readmemb(path, width, depth=None) -> list[int]:
    """Read ``$readmemb`` text (``@addr`` markers in hex, comments, ``_`` in numbers)."""
    return _read_vlog(path, width, depth, 2, True, True, True, "$readmemb")


def write_updatemem(path, words, width, depth=None, comment=None) -> None:
    """Xilinx updatemem ``.mem``: ``@00000000`` then hex words (no ``0x``), one per line.

    Addresses are word addresses of this memory.
    """
    words = check_words(words, width, depth, path)
    nd = _digits(width, 4)
    lines = _header_lines(comment, width, len(words), "//")
    lines.append("@00000000")
    lines.extend(format(w, f"0{nd}X") for w in words)
    Path(path).write_text("\n".join(lines) + "\n")


def read_updatemem(path, width, depth=None) -> list[int]:
    """Read an updatemem ``.mem``: ``@ADDR`` blocks of hex words; blocks must not overlap."""
    return _read_vlog(path, width, depth, 16, False, False, True, "an updatemem .mem file")


# ------------------------------------------------------------------ Xilinx COE
_COE_RADIX = {2: 1, 10: None, 16: 4}


def write_coe(path, words, width, depth=None, comment=None, radix: int = 16) -> None:
    """Xilinx COE with ``memory_initialization_radix`` 2, 10 or 16."""
    words = check_words(words, width, depth, path)
    if radix not in _COE_RADIX:
        raise ValueError(f"COE radix must be 2, 10 or 16, got {radix!r}")
    lines = _header_lines(comment, width, len(words), ";")
    lines.append(f"memory_initialization_radix={radix};")
    if radix == 10:
        body = [str(w) for w in words]
    else:
        nd = _digits(width, _COE_RADIX[radix])
        spec = f"0{nd}{'X' if radix == 16 else 'b'}"
        body = [format(w, spec) for w in words]
    if body:
        lines.append("memory_initialization_vector=")
        lines.extend(v + ("," if i + 1 < len(body) else ";") for i, v in enumerate(body))
    else:
        lines.append("memory_initialization_vector=;")
    Path(path).write_text("\n".join(lines) + "\n")


def read_coe(path, width, depth=None) -> list[int]:
    """Read a Xilinx COE (block memory keywords; radix 2, 10 or 16).

    Lines whose first non-blank character is ``;`` are comments.  Statements are
    ``keyword = value ;``; the vector's values are separated by commas and/or white
    space.  Other keywords (e.g. a distributed-memory ``radix``) are rejected by name.
    """
    _check_width(width)
    text = _read_text(path)
    # Blank out comment lines (keeping newlines so positions map to line numbers).
    lines = text.split("\n")
    clean = "\n".join("" if ln.lstrip().startswith(";") else ln for ln in lines)
    line_of = _liner(clean)
    radix = None
    vector = None
    pos = 0
    stmt_re = re.compile(r"\s*([A-Za-z_][A-Za-z_0-9]*)\s*=\s*([^;]*);", re.S)
    while True:
        while pos < len(clean) and clean[pos].isspace():
            pos += 1
        if pos >= len(clean):
            break
        m = stmt_re.match(clean, pos)
        where = line_of(pos)
        if m is None:
            snippet = clean[pos:pos + 30].split("\n")[0]
            if re.match(r"[A-Za-z_][A-Za-z_0-9]*\s*=", clean[pos:]):
                raise MemFileError(path, where, f"statement {snippet!r} is not terminated "
                                                f"(expected ';')")
            raise MemFileError(path, where, f"unexpected {snippet!r} (expected "
                                            f"'keyword = value;')")
        key, value = m.group(1).lower(), m.group(2)
        if key == "memory_initialization_radix":
            try:
                radix = int(value.strip())
            except ValueError:
                radix = -1
            if radix not in _COE_RADIX:
                raise MemFileError(path, where, f"memory_initialization_radix {value.strip()!r}"
                                                f" is not supported (expected 2, 10 or 16)")
        elif key == "memory_initialization_vector":
            if radix is None:
                raise MemFileError(path, where, "memory_initialization_vector before "
                                                "memory_initialization_radix (expected the "
                                                "radix first)")
            if vector is not None:
                raise MemFileError(path, where, "second memory_initialization_vector")
            vector = (m.start(2), value)
        else:
            raise MemFileError(path, where, f"unknown COE keyword {m.group(1)!r} (expected "
                                            f"memory_initialization_radix or "
                                            f"memory_initialization_vector)")
        pos = m.end()
    if vector is None:
        raise MemFileError(path, None, "no memory_initialization_vector (file truncated?)")
    start, body = vector
    img = _Image(path, width, depth, False)
    digit = {2: "[01]+", 10: "[0-9]+", 16: "[0-9a-fA-F]+"}[radix]
    addr = 0
    for tm in re.finditer(r"[^,\s]+|,", body):
        tok, where = tm.group(0), line_of(start + tm.start())
        if tok == ",":
            continue
        if not re.fullmatch(digit, tok):
            raise MemFileError(path, where, f"{tok!r} is not a radix-{radix} number")
        img.put(addr, int(tok, radix), where)
        addr += 1
    return img.result()


# ------------------------------------------------------------------ Intel MIF
_MIF_RADIX = {"BIN": 2, "OCT": 8, "HEX": 16, "DEC": 10, "UNS": 10}
_MIF_DIGITS = {"BIN": "[01]+", "OCT": "[0-7]+", "HEX": "[0-9a-fA-F]+", "DEC": "-?[0-9]+",
               "UNS": "[0-9]+"}


def write_mif(path, words, width, depth=None, comment=None, radix: str = "HEX") -> None:
    """Intel MIF; ``DEPTH`` is ``depth`` (default: the image length), unused words 0.

    ``radix`` is the ``DATA_RADIX``: ``HEX``, ``BIN``, ``OCT`` or ``UNS``.
    """
    words = check_words(words, width, depth, path)
    radix = radix.upper()
    if radix not in ("HEX", "BIN", "OCT", "UNS"):
        raise ValueError(f"MIF data radix must be HEX, BIN, OCT or UNS, got {radix!r}")
    total = len(words) if depth is None else depth
    if total < 1:
        raise ValueError("a MIF needs DEPTH >= 1; pass depth= for an empty image")
    bits = {"HEX": 4, "BIN": 1, "OCT": 3, "UNS": None}[radix]
    spec = {"HEX": "X", "BIN": "b", "OCT": "o", "UNS": "d"}[radix]
    nd = _digits(width, bits) if bits else 0
    lines = _header_lines(comment, width, len(words), "--")
    lines += [f"DEPTH = {total};", f"WIDTH = {width};", "ADDRESS_RADIX = HEX;",
              f"DATA_RADIX = {radix};", "CONTENT", "BEGIN"]
    lines.extend(f"{a:X} : {format(w, f'0{nd}{spec}')};" for a, w in enumerate(words))
    if total > len(words):
        lines.append(f"[{len(words):X}..{total - 1:X}] : 0;")
    lines.append("END;")
    Path(path).write_text("\n".join(lines) + "\n")


_MIF_TOKEN = re.compile(r"--[^\n]*|%[^%]*%|%|\[|\]|\.\.|:|;|=|[^\s\[\]:;=%.]+|\S", re.S)


def read_mif(path, width, depth=None) -> list[int]:
    """Read an Intel MIF (radix BIN/OCT/HEX/DEC/UNS; single, list and range entries).

    Returns ``DEPTH`` words.  ``WIDTH`` must equal ``width`` and ``DEPTH`` must fit
    ``depth``.  ``DEC`` data may be negative (two's complement in ``WIDTH`` bits).
    """
    _check_width(width)
    text = _read_text(path)
    toks = []
    line_of = _liner(text)
    for m in _MIF_TOKEN.finditer(text):
        tok = m.group(0)
        if tok.startswith("--") or (tok.startswith("%") and len(tok) > 1):
            continue
        if tok == "%":
            raise MemFileError(path, line_of(m.start()),
                               "'%' comment is never closed (expected a second '%')")
        toks.append((tok, line_of(m.start())))
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else (None, "end of file")

    def take(expected: str | None = None, what: str = ""):
        nonlocal pos
        tok, where = peek()
        if tok is None:
            raise MemFileError(path, None, f"file ends early (expected {what or expected!r};"
                                           f" truncated?)")
        if expected is not None and tok.upper() != expected:
            raise MemFileError(path, where, f"found {tok!r}, expected {expected!r}")
        pos += 1
        return tok, where

    header: dict[str, tuple[str, str]] = {}
    while True:
        tok, where = peek()
        if tok is None:
            raise MemFileError(path, None, "no 'CONTENT BEGIN' section (file truncated?)")
        if tok.upper() == "CONTENT":
            break
        key, where = take(what="a header keyword")
        if key.upper() not in ("DEPTH", "WIDTH", "ADDRESS_RADIX", "DATA_RADIX"):
            raise MemFileError(path, where, f"unknown MIF keyword {key!r} (expected DEPTH, "
                                            f"WIDTH, ADDRESS_RADIX, DATA_RADIX or CONTENT)")
        take("=")
        val, vwhere = take(what="a value")
        take(";")
        header[key.upper()] = (val, vwhere)
    take("CONTENT")
    take("BEGIN")
    for key in ("DEPTH", "WIDTH"):
        if key not in header:
            raise MemFileError(path, None, f"MIF header has no {key} (expected '{key} = n;')")
        if not header[key][0].isdigit():
            raise MemFileError(path, header[key][1], f"{key} {header[key][0]!r} is not a "
                                                     f"decimal number")
    mdepth, mwidth = int(header["DEPTH"][0]), int(header["WIDTH"][0])
    if mwidth != width:
        raise MemFileError(path, header["WIDTH"][1], f"WIDTH = {mwidth}, expected {width}")
    if depth is not None and mdepth > depth:
        raise MemFileError(path, header["DEPTH"][1], f"DEPTH = {mdepth} does not fit a "
                                                     f"memory of depth {depth}")
    radices = {}
    for key in ("ADDRESS_RADIX", "DATA_RADIX"):
        val, where = header.get(key, ("UNS", None))
        if val.upper() not in _MIF_RADIX:
            raise MemFileError(path, where, f"{key} {val!r} is not supported (expected one "
                                            f"of {sorted(_MIF_RADIX)})")
        radices[key] = val.upper()

    def number(tok, where, key, what):
        r = radices[key]
        if not re.fullmatch(_MIF_DIGITS[r], tok):
            raise MemFileError(path, where, f"{what} {tok!r} is not a {r} number")
        value = int(tok, _MIF_RADIX[r])
        if r == "DEC" and value < 0:
            if value < -(1 << (mwidth - 1)):
                raise MemFileError(path, where, f"{what} {tok} does not fit {mwidth} bits")
            value += 1 << mwidth
        return value

    img = _Image(path, width, mdepth, True)
    while True:
        tok, where = peek()
        if tok is None:
            raise MemFileError(path, None, "file ends inside CONTENT (expected 'END;'; "
                                           "truncated?)")
        if tok.upper() == "END":
            take()
            take(";")
            break
        if tok == "[":
            take()
            a, aw = take(what="a range start")
            lo = number(a, aw, "ADDRESS_RADIX", "address")
            take("..")
            b, bw = take(what="a range end")
            hi = number(b, bw, "ADDRESS_RADIX", "address")
            take("]")
            if hi < lo:
                raise MemFileError(path, bw, f"address range [{a}..{b}] is empty "
                                             f"(expected start <= end)")
            addrs = range(lo, hi + 1)
        else:
            a, aw = take()
            lo = number(a, aw, "ADDRESS_RADIX", "address")
            addrs = None
        take(":")
        data = []
        while True:
            d, dw = peek()
            if d is None:
                raise MemFileError(path, None, "file ends inside an entry (expected ';')")
            if d == ";":
                take()
                break
            take()
            data.append((number(d, dw, "DATA_RADIX", "data"), dw))
        if not data:
            raise MemFileError(path, aw, "entry without data (expected 'address : data;')")
        if addrs is None:      # "a : d1 d2 ..." fills consecutive addresses
            for k, (v, dw) in enumerate(data):
                img.put(lo + k, v, dw)
        else:                  # "[a..b] : d1 d2 ..." repeats the pattern over the range
            if addrs.stop > mdepth:
                raise MemFileError(path, aw, f"address range ends at {addrs.stop - 1:#x}, "
                                             f"beyond DEPTH = {mdepth}")
            for k, addr in enumerate(addrs):
                v, dw = data[k % len(data)]
                img.put(addr, v, dw)
    tok, where = peek()
    if tok is not None:
        raise MemFileError(path, where, f"unexpected {tok!r} after 'END;'")
    return img.result(mdepth)


# ------------------------------------------------------------------ raw binary
def write_bin(path, words, width, depth=None, comment=None) -> None:
    """Raw little-endian bytes, ``ceil(width / 8)`` bytes per word (no header)."""
    words = check_words(words, width, depth, path)
    Path(path).write_bytes(words_to_bytes(words, width))


def read_bin(path, width, depth=None) -> list[int]:
    """Read a raw ``.bin``; its size must be a whole number of words."""
    _check_width(width)
    data = Path(path).read_bytes()
    n = _nbytes(width)
    if len(data) % n:
        raise MemFileError(path, f"byte {len(data) - len(data) % n}",
                           f"file size {len(data)} is not a multiple of {n} bytes per "
                           f"{width}-bit word (truncated?)")
    words = bytes_to_words(data, width)
    if depth is not None and len(words) > depth:
        raise MemFileError(path, None, f"{len(words)} words do not fit a memory of depth {depth}")
    for addr, w in enumerate(words):
        if w >> width:
            raise MemFileError(path, f"byte {addr * n}", f"word {addr} = {w:#x} has bits set "
                                                         f"above the {width}-bit width (expected "
                                                         f"zero padding)")
    return words


# ------------------------------------------------------------------ numpy archive
def write_npz(path, words, width, depth=None, comment=None) -> None:
    """``.npz`` with ``words`` (n, bytes) uint8 little-endian and ``width``."""
    words = check_words(words, width, depth, path)
    n = _nbytes(width)
    arr = np.frombuffer(words_to_bytes(words, width), dtype=np.uint8).reshape(len(words), n)
    buf = io.BytesIO()
    np.savez(buf, words=arr, width=np.int64(width))
    Path(path).write_bytes(buf.getvalue())


def read_npz(path, width, depth=None) -> list[int]:
    """Read an ``.npz`` written by `write_npz`."""
    _check_width(width)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise MemFileError(path, None, f"not a readable .npz archive ({exc})") from None
    for key in ("words", "width"):
        if key not in arrays:
            raise MemFileError(path, f"array {key!r}", f"missing (found {sorted(arrays)})")
    if int(arrays["width"]) != width:
        raise MemFileError(path, "array 'width'", f"width {int(arrays['width'])}, "
                                                  f"expected {width}")
    arr = arrays["words"]
    n = _nbytes(width)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != n:
        raise MemFileError(path, "array 'words'", f"dtype {arr.dtype} shape {arr.shape}, "
                                                  f"expected uint8 (n, {n})")
    words = bytes_to_words(arr.tobytes(), width)
    if depth is not None and len(words) > depth:
        raise MemFileError(path, None, f"{len(words)} words do not fit a memory of depth {depth}")
    for addr, w in enumerate(words):
        if w >> width:
            raise MemFileError(path, "array 'words'", f"row {addr} = {w:#x} has bits above "
                                                      f"the {width}-bit width")
    return words


# ------------------------------------------------------------------ dispatch
_WRITERS: dict[str, Callable] = {
    "hex": write_readmemh, "memb": write_readmemb, "coe": write_coe, "mem": write_updatemem,
    "mif": write_mif, "bin": write_bin, "npz": write_npz,
}
_READERS: dict[str, Callable] = {
    "hex": read_readmemh, "memb": read_readmemb, "coe": read_coe, "mem": read_updatemem,
    "mif": read_mif, "bin": read_bin, "npz": read_npz,
}


def format_of(path, fmt: str | None = None) -> str:
    """The format key of ``path`` (from ``fmt`` or the file suffix)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown memory file format {fmt!r}; known: {sorted(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    for key, suf in FORMATS.items():
        if suf == suffix:
            return key
    raise ValueError(f"{path}: cannot tell the memory file format from suffix {suffix!r}; "
                     f"known suffixes: {sorted(FORMATS.values())}")


def write_memory(path, words: Iterable[int], width: int, fmt: str | None = None,
                 depth: int | None = None, comment: str | None = None) -> None:
    """Write ``words`` in format ``fmt`` (default: from the suffix of ``path``)."""
    _WRITERS[format_of(path, fmt)](path, list(words), width, depth=depth, comment=comment)


def read_memory(path, width: int, fmt: str | None = None, depth: int | None = None,
                count: int | None = None) -> list[int]:
    """Read a memory image of ``width``-bit words (format from ``fmt`` or the suffix).

    With ``count`` (the number of words the image must have, e.g. from a manifest) a
    file with fewer words is reported as truncated, and words past ``count`` (a MIF's
    ``DEPTH`` padding) must be zero and are dropped.
    """
    if not Path(path).is_file():
        raise MemFileError(path, None, "no such file")
    words = _READERS[format_of(path, fmt)](path, width, depth=depth)
    if count is not None:
        if len(words) < count:
            raise MemFileError(path, None, f"file holds {len(words)} words, expected {count} "
                                           f"(truncated?)")
        extra = next((a for a in range(count, len(words)) if words[a]), None)
        if extra is not None:
            raise MemFileError(path, None, f"word {extra} = {words[extra]:#x} lies beyond the "
                                           f"{count} expected words (expected 0)")
        words = words[:count]
    return words
