#!/usr/bin/env python3
"""An independent reader of the TensorBoard event files zoo writes (tests/training/loggers.cpp runs it).

Every record's TFRecord framing and both masked CRC-32Cs are checked with a CRC-32C computed here, in Python; the
first record is checked on the wire by the published field numbers (1 wall_time, 3 file_version); every record is
decoded with the classes protoc generates from training/tensorboard.proto (python3-protobuf). Prints one JSON
summary: scalars by tag as [step, value] pairs, images by tag as [step, width, height, is_png], texts, the steps of
SessionLog START events. Exits non-zero, naming the file and offset, on the first problem.

usage: tfevents.py REPO_ROOT EVENT_FILE...
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked(crc):
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(path):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
        if pos + 12 > len(data):
            sys.exit(f"{path}: torn record header at offset {pos}")
        (length,) = struct.unpack_from("<Q", data, pos)
        (length_crc,) = struct.unpack_from("<I", data, pos + 8)
        if masked(crc32c(data[pos:pos + 8])) != length_crc:
            sys.exit(f"{path}: bad length CRC at offset {pos}")
        end = pos + 12 + length
        if end + 4 > len(data):
            sys.exit(f"{path}: torn record at offset {pos}")
        body = data[pos + 12:end]
        (body_crc,) = struct.unpack_from("<I", data, end)
        if masked(crc32c(body)) != body_crc:
            sys.exit(f"{path}: bad data CRC at offset {pos}")
        yield pos, body
        pos = end + 4


def check_first_on_wire(path, body):
    # Field 1 (wall_time, a double: wire type 1) then field 3 (file_version, length-delimited: wire type 2).
    if len(body) < 9 or body[0] != (1 << 3 | 1):
        sys.exit(f"{path}: the first record does not start with wall_time (field 1)")
    rest = body[9:]
    if not rest or rest[0] != (3 << 3 | 2) or rest[2:2 + rest[1]] != b"brain.Event:2":
        sys.exit(f"{path}: the first record's field 3 is not file_version 'brain.Event:2'")


def main():
    root, files = sys.argv[1], sys.argv[2:]
    out_dir = tempfile.mkdtemp()
    subprocess.run(["protoc", f"--python_out={out_dir}", f"-I{root}", os.path.join(root, "training", "tensorboard.proto")],
                   check=True)
    sys.path.insert(0, out_dir)
    from training import tensorboard_pb2  # noqa: E402  (generated just now)

    summary = {"files": len(files), "records": 0, "file_version": [], "scalars": {}, "images": {}, "texts": {},
               "session_starts": []}
    for path in files:
        for index, (offset, body) in enumerate(records(path)):
            summary["records"] += 1
            if index == 0:
                check_first_on_wire(path, body)
            event = tensorboard_pb2.Event()
            event.ParseFromString(body)
            kind = event.WhichOneof("what")
            if kind == "file_version":
                summary["file_version"].append(event.file_version)
            elif kind == "session_log":
                if event.session_log.status == tensorboard_pb2.SessionLog.START:
                    summary["session_starts"].append(event.step)
            elif kind == "summary":
                for value in event.summary.value:
                    which = value.WhichOneof("value")
                    if which == "simple_value":
                        summary["scalars"].setdefault(value.tag, []).append([event.step, value.simple_value])
                    elif which == "image":
                        image = value.image
                        is_png = image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
                        summary["images"].setdefault(value.tag, []).append(
                            [event.step, image.width, image.height, is_png])
                    elif which == "tensor":
                        if value.metadata.plugin_data.plugin_name != "text":
                            sys.exit(f"{path}: a tensor summary that is not text at offset {offset}")
                        texts = [s.decode() for s in value.tensor.string_val]
                        summary["texts"].setdefault(value.tag, []).extend(texts)
            else:
                sys.exit(f"{path}: an event with nothing in it at offset {offset}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
