"""The few bytes of the USTAR tar format a shard needs: a member header, padding and the end marker.

Why not `tarfile` / webdataset's `TarWriter`: they build each 512-byte header
through `TarInfo.tobuf` (~13 us) and copy every payload through a BytesIO in
16 KiB chunks; with ~200 members a sample that made webdataset's writer reach
only ~0.4x of a raw sequential write here (bench/shards.py). Headers from a
template plus `os.writev` of header, payload and padding keep the same archive
format at near raw speed. `tarfile` and webdataset read the result (tests).
"""

from __future__ import annotations

BLOCK = 512
RECORD = 20 * BLOCK  # tar archives are padded to whole records, as tarfile and GNU tar write them
END = b"\0" * (2 * BLOCK)
_OWNER = b"bigdata"  # webdataset's TarWriter default user/group names

_TEMPLATE = bytearray(BLOCK)
_TEMPLATE[100:108] = b"0000444\0"  # mode r--r--r--
_TEMPLATE[108:116] = b"0000000\0"  # uid
_TEMPLATE[116:124] = b"0000000\0"  # gid
_TEMPLATE[156:157] = b"0"  # regular file
_TEMPLATE[257:265] = b"ustar\x0000"
_TEMPLATE[265 : 265 + len(_OWNER)] = _OWNER
_TEMPLATE[297 : 297 + len(_OWNER)] = _OWNER
_TEMPLATE[329:337] = b"0000000\0"
_TEMPLATE[337:345] = b"0000000\0"


def member_header(name: str, size: int, mtime: int = 0) -> bytes:
    """A USTAR header for a regular file `name` (ASCII, at most 100 bytes) of `size` bytes (< 8 GiB)."""
    raw = name.encode("ascii", "replace")
    if len(raw) > 100 or not raw or not name.isascii():
        raise ValueError(f"tar member name must be 1-100 ASCII bytes: {name!r}")
    if not 0 <= size < 8 << 30:
        raise ValueError(f"tar member size out of USTAR range: {size}")
    h = bytearray(_TEMPLATE)
    h[0 : len(raw)] = raw
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"%011o\0" % mtime
    h[148:156] = b"        "  # the checksum counts its own field as spaces
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def end_of_archive(written: int) -> bytes:
    """Two zero blocks, then zeros up to a whole record."""
    total = written + len(END)
    return END + b"\0" * (-total % RECORD)
