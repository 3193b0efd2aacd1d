#!/usr/bin/env python3
"""Read an event-file directory with TensorBoard's own loader.

Usage:
  check_tensorboard.py DIR     -> prints JSON {tag: [[step, value], ...]}
  check_tensorboard.py --crc   -> prints reference masked CRC32C values used
                                  by the Rust unit test (TensorBoard's
                                  pure-Python implementation, plus an
                                  independent bitwise one as a cross-check)
"""
import json
import struct
import sys


def bitwise_masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def crc_mode():
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    for label, data in [
        ('b"123456789"', b"123456789"),
        ("5u64.to_le_bytes()", struct.pack("<Q", 5)),
        ('b""', b""),
    ]:
        tb, ours = masked_crc32c(data), bitwise_masked_crc32c(data)
        assert tb == ours, (label, tb, ours)
        print(f"{label}: 0x{tb:08X}")


def main():
    if sys.argv[1:] == ["--crc"]:
        return crc_mode()
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(sys.argv[1])
    ea.Reload()
    out = {
        tag: [[s.step, s.value] for s in ea.Scalars(tag)]
        for tag in sorted(ea.Tags()["scalars"])
    }
    # One tag per line keeps the output readable for long runs.
    print("{\n" + ",\n".join(f" {json.dumps(t)}: {json.dumps(v)}" for t, v in out.items()) + "\n}")


if __name__ == "__main__":
    main()
