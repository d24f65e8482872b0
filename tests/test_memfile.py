"""Memory init files: exact round trips, vendor syntax, malformed input."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from golden import memfile as mf
from golden.memfile import FORMATS, MemFileError, read_memory, write_memory


@st.composite
def images(draw, max_depth=40):
    width = draw(st.integers(1, 256))
    n = draw(st.integers(0, max_depth))
    words = draw(st.lists(st.integers(0, (1 << width) - 1), min_size=n, max_size=n))
    return width, words


_SETTINGS = settings(max_examples=40, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@_SETTINGS
@given(img=images())
def test_round_trip_every_format(tmp_path, fmt, img):
    width, words = img
    if fmt == "mif" and not words:
        words = [0]            # a MIF needs DEPTH >= 1
    path = tmp_path / f"m{FORMATS[fmt]}"
    write_memory(path, words, width, comment="round trip\nsecond line")
    assert read_memory(path, width) == words


@pytest.mark.parametrize("radix", [2, 10, 16])
@_SETTINGS
@given(img=images(max_depth=12))
def test_coe_round_trip_every_radix(tmp_path, radix, img):
    width, words = img
    path = tmp_path / "m.coe"
    mf.write_coe(path, words, width, radix=radix)
    assert mf.read_coe(path, width) == words


@pytest.mark.parametrize("radix", ["HEX", "BIN", "OCT", "UNS"])
@_SETTINGS
@given(img=images(max_depth=12), extra=st.integers(0, 5))
def test_mif_round_trip_every_radix_and_padded_depth(tmp_path, radix, img, extra):
    width, words = img
    words = words or [1 % (1 << width)]
    path = tmp_path / "m.mif"
    mf.write_mif(path, words, width, depth=len(words) + extra, radix=radix)
    assert mf.read_mif(path, width) == words + [0] * extra


def test_identical_image_from_every_reader(tmp_path):
    width, words = 107, [(i * 0x9E3779B97F4A7C15) % (1 << 107) for i in range(50)]
    seen = {}
    for fmt, suffix in FORMATS.items():
        write_memory(tmp_path / f"x{suffix}", words, width, depth=64)
        seen[fmt] = mf.image_sha256(read_memory(tmp_path / f"x{suffix}", width)[:50], width)
    assert len(set(seen.values())) == 1, seen
    assert seen["hex"] == mf.image_sha256(words, width)


# ------------------------------------------------------------ vendor syntax
def test_readmemh_markers_comments_underscores(tmp_path):
    p = tmp_path / "a.hex"
    p.write_text("// header\n/* block\n comment */ @2 0a_0b  // tail\n"
                 "ff /* inline */ @0 1\n")
    assert mf.read_readmemh(p, 16) == [1, 0, 0x0A0B, 0xFF]


def test_readmemb_markers(tmp_path):
    p = tmp_path / "a.memb"
    p.write_text("@1\n1_0_1\n// c\n111\n")
    assert mf.read_readmemb(p, 3) == [0, 5, 7]


def test_updatemem_blocks_and_odd_digits(tmp_path):
    p = tmp_path / "a.mem"
    p.write_text("@0000 3A 7B C4\n@0010 C74 A\n")
    got = mf.read_updatemem(p, 12)
    assert got[:3] == [0x3A, 0x7B, 0xC4] and got[16:] == [0xC74, 0xA] and len(got) == 18


def test_coe_comments_whitespace_and_commas(tmp_path):
    p = tmp_path / "a.coe"
    p.write_text("; a comment line\n  ; indented comment\nMEMORY_INITIALIZATION_RADIX = 2 ;\n"
                 "memory_initialization_vector =\n 101 , 11\n; comment in the middle\n"
                 "0 1,\n10;\n")
    assert mf.read_coe(p, 3) == [5, 3, 0, 1, 2]


def test_mif_lists_ranges_comments_and_radices(tmp_path):
    p = tmp_path / "a.mif"
    p.write_text("-- Quartus style\nWIDTH=8; DEPTH = 12;\n% block\n comment %\n"
                 "ADDRESS_RADIX=UNS;\nDATA_RADIX=DEC;\nCONTENT BEGIN\n"
                 "  [0..3] : 7;\n  4 : -1 2 3;  -- list\n  [8..11] : 1 2;\nEND;\n")
    assert mf.read_mif(p, 8) == [7, 7, 7, 7, 255, 2, 3, 0, 1, 2, 1, 2]


# ------------------------------------------------------------ bad input
def _bad(tmp_path, name, text, width, match, depth=None):
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    with pytest.raises(MemFileError, match=match) as exc:
        read_memory(p, width, depth=depth)
    assert str(p) in str(exc.value)
    return exc.value


@pytest.mark.parametrize("name,text,width,match,depth", [
    ("a.hex", "@0\n1\nzz\n", 8, r"line 3: 'zz' is not a hex word", None),
    ("a.hex", "100\n", 8, r"line 1: value 0x100 does not fit the 8-bit", None),
    ("a.hex", "1\n2\n3\n", 8, r"line 3: address 0x2 is beyond the memory depth 2", 2),
    ("a.hex", "@zz 1\n", 8, r"line 1: bad address marker", None),
    ("a.hex", "1 /* open\n2\n", 8, r"line 1: '/\*' comment is never closed", None),
    ("a.memb", "102\n", 8, r"line 1: '102' is not a binary word", None),
    ("a.mem", "@0 0x1F\n", 8, r"'0x' prefix is not allowed", None),
    ("a.mem", "@0 1 2\n@1 3\n", 8, r"line 2: address 0x1 is defined twice", None),
    ("a.mem", "@0 1_0\n", 8, r"'1_0' is not a hex word", None),
    ("a.coe", "memory_initialization_radix=16;\nmemory_initialization_vector=1,2,\n", 8,
     r"line 2: statement .* is not terminated", None),
    ("a.coe", "memory_initialization_vector=1;\n", 8, r"before memory_initialization_radix", None),
    ("a.coe", "memory_initialization_radix=8;\nmemory_initialization_vector=1;\n", 8,
     r"line 1: .* not supported \(expected 2, 10 or 16\)", None),
    ("a.coe", "memory_initialization_radix=2;\nmemory_initialization_vector=1,2;\n", 8,
     r"line 2: '2' is not a radix-2 number", None),
    ("a.coe", "memory_initialization_radix=2;\n", 8, r"no memory_initialization_vector", None),
    ("a.mif", "WIDTH=8;\nDEPTH=4;\nCONTENT BEGIN\n0 : 1;\n", 8, r"file ends inside CONTENT",
     None),
    ("a.mif", "WIDTH=16;\nDEPTH=4;\nCONTENT BEGIN\nEND;\n", 8, r"line 1: WIDTH = 16, "
     r"expected 8", None),
    ("a.mif", "WIDTH=8;\nDEPTH=40;\nCONTENT BEGIN\nEND;\n", 8, r"line 2: DEPTH = 40 does not "
     r"fit a memory of depth 16", 16),
    ("a.mif", "WIDTH=8;\nDEPTH=4;\nDATA_RADIX=HEX;\nCONTENT BEGIN\n0 : 1G;\nEND;\n", 8,
     r"line 5: data '1G' is not a HEX number", None),
    ("a.mif", "WIDTH=8;\nDEPTH=4;\nCONTENT BEGIN\n[2..9] : 0;\nEND;\n", 8,
     r"line 4: .* beyond DEPTH = 4", None),
    ("a.mif", "WIDTH=8;\nDEPTH=4;\nCONTENT BEGIN\n[3..1] : 0;\nEND;\n", 8, r"is empty", None),
    ("a.mif", "WIDTH=8;\nCONTENT BEGIN\nEND;\n", 8, r"no DEPTH", None),
    ("a.mif", "WIDTH=8;\nDEPTH=4;\n% unclosed\nCONTENT BEGIN\nEND;\n", 8, r"never closed",
     None),
    ("a.bin", b"\x01\x02\x03", 16, r"byte 2: file size 3 is not a multiple of 2", None),
    ("a.bin", b"\xff", 4, r"byte 0: word 0 = 0xff has bits set above the 4-bit", None),
    ("a.bin", b"\x00" * 6, 8, r"6 words do not fit a memory of depth 4", 4),
    ("a.npz", b"not a zip", 8, r"not a readable .npz", None),
])
def test_malformed_files_name_file_line_and_expectation(tmp_path, name, text, width, match,
                                                        depth):
    _bad(tmp_path, name, text, width, match, depth)


def test_npz_wrong_width(tmp_path):
    p = tmp_path / "a.npz"
    mf.write_npz(p, [1, 2], 12)
    with pytest.raises(MemFileError, match=r"array 'width': width 12, expected 16"):
        mf.read_npz(p, 16)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_truncated_file_is_reported_against_the_expected_count(tmp_path, fmt):
    p = tmp_path / f"a{FORMATS[fmt]}"
    write_memory(p, [0x1234, 0x5678, 0x9ABC], 16)
    if fmt in ("bin", "npz"):
        data = p.read_bytes()
        p.write_bytes(data[:4] if fmt == "bin" else data[:len(data) // 2])
        match = r"expected 3|not a readable"
    else:
        p.write_text("\n".join(p.read_text().splitlines()[:-1]) + "\n")   # lose the tail
        match = r"expected 3|truncated|ends|not terminated"
    with pytest.raises(MemFileError, match=match):
        read_memory(p, 16, count=3)


def test_count_drops_zero_padding_and_rejects_nonzero_extra(tmp_path):
    p = tmp_path / "a.mif"
    mf.write_mif(p, [5, 6], 8, depth=8)
    assert read_memory(p, 8, count=2) == [5, 6]
    with pytest.raises(MemFileError, match=r"word 1 = 0x6 lies beyond the 1 expected"):
        read_memory(p, 8, count=1)


def test_writers_reject_bad_words_and_depth(tmp_path):
    with pytest.raises(MemFileError, match=r"word 1 = 0x100 does not fit 8 bits"):
        write_memory(tmp_path / "a.hex", [1, 256], 8)
    with pytest.raises(MemFileError, match=r"3 words do not fit a memory of depth 2"):
        write_memory(tmp_path / "a.coe", [1, 2, 3], 8, depth=2)
    with pytest.raises(ValueError, match=r"cannot tell the memory file format"):
        write_memory(tmp_path / "a.txt", [1], 8)
    with pytest.raises(ValueError, match=r"word width must be >= 1"):
        write_memory(tmp_path / "a.hex", [0], 0)


def test_missing_file(tmp_path):
    with pytest.raises(MemFileError, match="no such file"):
        read_memory(tmp_path / "nope.hex", 8)
