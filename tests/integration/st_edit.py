"""Edits a safetensors file in place, for the safety tests (stdlib only).

  st_edit.py set FILE TENSOR INDEX HEX16     element INDEX of a 2-byte tensor := bits HEX16
  st_edit.py dup FILE                        repeat the first tensor's header entry (a duplicated key)
  st_edit.py first FILE [DTYPE]              print the name of the first tensor (of DTYPE) in the file
  st_edit.py get FILE TENSOR INDEX           print the bits of element INDEX of a 2-byte tensor (hex)
"""
import json
import struct
import sys


def read(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw, n, raw[8 : 8 + n].decode()


def main():
    cmd, path = sys.argv[1], sys.argv[2]
    raw, n, text = read(path)
    header = json.loads(text)
    names = [k for k in header if k != "__metadata__"]
    if cmd == "first":
        want = sys.argv[3] if len(sys.argv) > 3 else None
        print(next(k for k in names if want is None or header[k]["dtype"] == want))
    elif cmd == "set":
        tensor, index, bits = sys.argv[3], int(sys.argv[4]), int(sys.argv[5], 16)
        entry = header[tensor]
        assert entry["dtype"] in ("BF16", "F16"), entry
        at = 8 + n + entry["data_offsets"][0] + 2 * index
        assert at + 2 <= 8 + n + entry["data_offsets"][1]
        data = bytearray(raw)
        data[at : at + 2] = struct.pack("<H", bits)
        with open(path, "wb") as f:
            f.write(data)
    elif cmd == "get":
        tensor, index = sys.argv[3], int(sys.argv[4])
        entry = header[tensor]
        at = 8 + n + entry["data_offsets"][0] + 2 * index
        print(f"{struct.unpack('<H', raw[at : at + 2])[0]:04x} {entry['dtype']}")
    elif cmd == "dup":
        # The same entry text once more before the closing brace: still valid
        # JSON, and a header that names one tensor twice.
        first = names[0]
        extra = "," + json.dumps(first) + ":" + json.dumps(header[first], separators=(",", ":"))
        body = text.rstrip()
        assert body.endswith("}")
        body = body[:-1] + extra + "}"
        body += " " * (-len(body) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(body)) + body.encode() + raw[8 + n :])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
