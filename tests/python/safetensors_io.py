"""A safetensors reader and writer written from the format's description (python3-safetensors is not in Debian
12), for the round-trip tests of zoo export --format safetensors and zoo import:

  safetensors_io.py check FILE ARCHIVE   FILE's tensors equal the parameters and buffers of the TorchScript ARCHIVE
  safetensors_io.py write FILE           writes the weights of a torch.nn MLP (784 -> 8 -> 10) as zoo names them
  safetensors_io.py same FILE_A FILE_B   the two files hold the same tensors, bit for bit
"""
import json
import struct
import sys

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


def read(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    meta = header.pop("__metadata__", {})
    out = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        buf = bytearray(data[begin:end])
        t = torch.frombuffer(buf, dtype=DTYPES[entry["dtype"]]) if buf else torch.empty(0, dtype=DTYPES[entry["dtype"]])
        out[name] = t.reshape(entry["shape"]).clone()
    return out, meta


def write(path, tensors):
    inverse = {v: k for k, v in DTYPES.items()}
    header, blobs, at = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        b = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": inverse[t.dtype], "shape": list(t.shape), "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    text = json.dumps(header).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    mode = sys.argv[1]
    if mode == "check":
        tensors, meta = read(sys.argv[2])
        module = torch.jit.load(sys.argv[3])
        expected = dict(module.named_parameters())
        expected.update(dict(module.named_buffers()))
        assert sorted(tensors) == sorted(expected), (sorted(tensors), sorted(expected))
        for name, t in expected.items():
            assert torch.equal(tensors[name], t.detach()), name
        print(json.dumps({"tensors": len(tensors), "metadata": meta}))
    elif mode == "write":
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(784, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10))
        write(sys.argv[2], {"net." + k: v for k, v in net.state_dict().items()})
    elif mode == "same":
        a, _ = read(sys.argv[2])
        b, _ = read(sys.argv[3])
        assert sorted(a) == sorted(b), (sorted(a), sorted(b))
        for name in a:
            assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
        print(len(a))


if __name__ == "__main__":
    main()
