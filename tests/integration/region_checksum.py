"""The region file checksum shared by the schemes "xxh3-64-hdf5-regions" and
"xxh3-64-distcp-regions" (docs/formats.md), computed independently of
megabridge: the file is cut at the given data regions (offset, length), the
runs between and after them are regions too, and the checksum is xxh3-64 over
the little-endian u64 triples (offset, length, xxh3-64 of the region's bytes)
in offset order. The callers find the data regions with their own readers
(h5py, Python's zipfile)."""
import struct

import xxhash


def region_file_checksum(data, regions):
    parts, pos = [], 0

    def add(off, n):
        parts.append(struct.pack("<QQQ", off, n, xxhash.xxh3_64_intdigest(data[off:off + n])))

    for off, n in sorted(regions):
        if n == 0:
            continue
        if off > pos:
            add(pos, off - pos)
        add(off, n)
        pos = off + n
    if len(data) > pos:
        add(pos, len(data) - pos)
    return xxhash.xxh3_64_hexdigest(b"".join(parts))
