#!/usr/bin/env python3
"""Writes the fixtures of the Swift weight-file readers (SafeTensorsTests, TorchCheckpointTests).

Run by hand from the repository root with the reference environment, then commit the outputs:

    /work/pyref/bin/python scripts/parity/make_serialization_fixtures.py

Outputs go to Tests/TorchTests/Fixtures/serialization/ (a few KB in all):

* dtypes.safetensors        one tensor per dtype + __metadata__, written by Python's safetensors
* writer_expected.safetensors  the exact bytes Swift's SafeTensors.write must produce for the tensors in
                            expected.json["writer"] (sorted JSON keys, sorted layout, space padding); checked here
                            to load with safetensors.torch.load_file, so a Swift-written file is known to be readable
* state_dict.pt             torch.save(model.state_dict()) of a tiny module: tied weight, transposed (non-contiguous)
                            buffer and a row slice sharing one storage
* nested.pt                 torch.save({"state_dict": sd, "epoch": 3})
* model_epoch.pt            torch.save({"model": sd, "epoch": 3, ...plain Python values...})
* dtypes.pt                 one tensor per dtype, incl. a scalar and an empty tensor
* protocol4.pt              state_dict.pt's dict saved with pickle protocol 4 (FRAME, MEMOIZE, STACK_GLOBAL)
* many_views.pt             41 views of one storage: a pickle memo past 255 entries (LONG_BINPUT, LONG_BINGET)
* parameter.pt              an nn.Parameter saved directly (torch._utils._rebuild_parameter)
* deflated.pt, zip64.pt     nested.pt re-zipped deflated / with ZIP64 structures
* bad_*.pt                  broken or hostile archives for the error-message tests
* expected.json             dtype, shape, raw bytes (hex) and decoded values of every tensor above

Nothing here is needed at test time.
"""

import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

OUT = Path(__file__).resolve().parents[2] / "Tests" / "TorchTests" / "Fixtures" / "serialization"

SAFETENSORS_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


def describe(t: torch.Tensor) -> dict:
    """What Swift compares: dtype, shape, the contiguous bytes, and values decoded the way Swift decodes them."""
    flat = t.detach().contiguous().reshape(-1)
    entry = {
        "dtype": str(t.dtype).removeprefix("torch."),
        "shape": list(t.shape),
        "hex": flat.view(torch.uint8).numpy().tobytes().hex(),
    }
    if t.dtype in (torch.float32, torch.float64):
        entry["values"] = flat.tolist()  # exact: Python floats round-trip float32 values
    elif t.dtype in (torch.float16, torch.bfloat16):
        entry["bits"] = [b & 0xFFFF for b in flat.view(torch.int16).tolist()]  # compare raw bits, not decoded halves
    elif t.dtype == torch.bool:
        entry["ints"] = [int(b) for b in flat.tolist()]
    else:
        entry["ints"] = flat.tolist()
    return entry


def one_of_each_dtype() -> dict:
    return {
        "f32": torch.tensor([[0.5, -1.25, 3.0], [1e-3, 65504.0, -0.0]], dtype=torch.float32),
        "f16": torch.tensor([1.0, -2.5, 0.099975586, 65504.0], dtype=torch.float16),
        "bf16": torch.tensor([[1.0, -3.140625], [1e30, 0.0078125]], dtype=torch.bfloat16),
        "f64": torch.tensor([1.0 / 3.0, -2.0e300], dtype=torch.float64),
        "i64": torch.tensor([1, -2, 3**30, -(2**62)], dtype=torch.int64),
        "i32": torch.tensor([7, -(2**31)], dtype=torch.int32),
        "i16": torch.tensor([-300, 300], dtype=torch.int16),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 1, 254, 255, 7], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True], dtype=torch.bool),
        "scalar": torch.tensor(2.75, dtype=torch.float32),
        "empty": torch.zeros(0, 3, dtype=torch.float32),
    }


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(4, 3)
        self.head = torch.nn.Linear(3, 4, bias=False)
        self.head.weight = self.emb.weight  # tied: both state-dict entries view one storage
        self.proj = torch.nn.Linear(3, 2)
        base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
        self.register_buffer("transposed", base.t())  # stride (1, 4): not contiguous
        self.register_buffer("rows", base[1:3])  # storage offset 4, same storage as `transposed`
        self.register_buffer("steps", torch.tensor([1, -2, 3**30], dtype=torch.int64))


def tiny_state_dict() -> dict:
    torch.manual_seed(0)
    return Tiny().state_dict()


def saved_bytes(obj, **kwargs) -> bytes:
    """torch.save into memory; the archive folder is then named `archive`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def rezip(source: bytes, path: Path, replace=None, drop=(), compression=zipfile.ZIP_STORED):
    """Copies the entries of the zip `source` into a new zip at `path`, replacing or dropping some."""
    replace = replace or {}
    with zipfile.ZipFile(io.BytesIO(source)) as src, zipfile.ZipFile(path, "w", compression=compression) as dst:
        for info in src.infolist():
            if info.filename in drop:
                continue
            dst.writestr(info.filename, replace.get(info.filename, src.read(info.filename)))


def write_zip64(source: bytes, path: Path):
    """Re-zips `source` with ZIP64 structures although it is tiny: zipfile uses ZIP64 fields past ZIP64_LIMIT, so
    lowering the limit gives central-directory entries with ZIP64 extra fields and a ZIP64 end record. The classic
    end record is then saturated (0xFFFF / 0xFFFFFFFF), as in a genuinely large file, so readers must follow the
    ZIP64 locator."""
    saved = zipfile.ZIP64_LIMIT
    zipfile.ZIP64_LIMIT = 0
    try:
        rezip(source, path)
    finally:
        zipfile.ZIP64_LIMIT = saved
    data = bytearray(path.read_bytes())
    end = data.rindex(b"PK\x05\x06")
    assert data[end - 20:end - 16] == b"PK\x06\x07", "expected a ZIP64 locator"
    struct.pack_into("<HHII", data, end + 8, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def check_torch_load(path: Path, expected: dict):
    # weights_only=False only because torch's restricted unpickler rejects the FRAME opcode of protocol 4; these are
    # files this script has just written.
    loaded = torch.load(path, weights_only=False)
    loaded = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
    for name, value in expected.items():
        assert torch.equal(loaded[name], value), (path, name)


def write_writer_fixture(expected: dict):
    """The bytes SafeTensors.write must produce, built by hand here (sorted keys, compact JSON, spaces up to a multiple
    of 8, tensors in sorted name order) and proven loadable by Python's safetensors."""
    tensors = {
        "b.bias": torch.tensor([0.25, -8.0], dtype=torch.float32),
        "a.weight": torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float16),
        "c.ids": torch.tensor([5, -6], dtype=torch.int64),
    }
    metadata = {"format": "pt", "source": "textcraftor/tests"}
    header, offset, data = {"__metadata__": metadata}, 0, b""
    for name in sorted(tensors):
        raw = tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"data_offsets": [offset, offset + len(raw)], "dtype": SAFETENSORS_NAMES[tensors[name].dtype],
                        "shape": list(tensors[name].shape)}
        offset += len(raw)
        data += raw
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    path = OUT / "writer_expected.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    loaded = load_file(path)
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    expected["writer_expected.safetensors"] = {"metadata": metadata,
                                               "tensors": {k: describe(v) for k, v in tensors.items()}}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    expected = {}

    # safetensors, written by the reference implementation.
    each = one_of_each_dtype()
    metadata = {"format": "pt", "note": "one tensor per dtype"}
    save_file(each, OUT / "dtypes.safetensors", metadata=metadata)
    expected["dtypes.safetensors"] = {"metadata": metadata, "tensors": {k: describe(v) for k, v in each.items()}}
    write_writer_fixture(expected)

    # torch.save archives.
    sd = tiny_state_dict()
    assert sd["emb.weight"].untyped_storage().data_ptr() == sd["head.weight"].untyped_storage().data_ptr()
    assert not sd["transposed"].is_contiguous() and sd["rows"].storage_offset() == 4
    sd_expected = {k: describe(v) for k, v in sd.items()}

    torch.save(sd, OUT / "state_dict.pt")
    expected["state_dict.pt"] = {"tensors": sd_expected}

    torch.save({"state_dict": sd, "epoch": 3}, OUT / "nested.pt")
    expected["nested.pt"] = {"tensors": sd_expected}

    small = {"proj.weight": sd["proj.weight"], "proj.bias": sd["proj.bias"]}
    torch.save({"model": small, "epoch": 3, "lr": 0.5, "name": "tiny", "flags": [True, False, None],
                "big": 2**40, "negative": -70000, "medium": 300, "pair": (1, 2)}, OUT / "model_epoch.pt")
    expected["model_epoch.pt"] = {"tensors": {k: describe(v) for k, v in small.items()}}

    torch.save(each, OUT / "dtypes.pt")
    expected["dtypes.pt"] = {"tensors": {k: describe(v) for k, v in each.items()}}

    torch.save(sd, OUT / "protocol4.pt", pickle_protocol=4)
    expected["protocol4.pt"] = {"tensors": sd_expected}

    # Many views of one small storage: enough memo entries for LONG_BINPUT/LONG_BINGET (past 255), sizes for BININT2.
    base = torch.arange(300, dtype=torch.int16) * 7
    views = {f"view.{i}": base[i:i + 5] for i in range(40)}
    views["whole"] = base
    torch.save(views, OUT / "many_views.pt")
    expected["many_views.pt"] = {"tensors": {k: describe(v) for k, v in views.items()}}

    parameter = torch.nn.Parameter(torch.tensor([1.5, -2.0]))
    torch.save({"p": parameter}, OUT / "parameter.pt")
    expected["parameter.pt"] = {"tensors": {"p": describe(parameter)}}

    nested_bytes = (OUT / "nested.pt").read_bytes()
    rezip(nested_bytes, OUT / "deflated.pt", compression=zipfile.ZIP_DEFLATED)
    expected["deflated.pt"] = {"tensors": sd_expected}
    write_zip64(nested_bytes, OUT / "zip64.pt")
    expected["zip64.pt"] = {"tensors": sd_expected}
    for name in ["state_dict.pt", "nested.pt", "protocol4.pt", "deflated.pt", "zip64.pt"]:
        check_torch_load(OUT / name, sd)

    # Broken archives. Saved in memory, so their folder is `archive/`.
    archive = saved_bytes(sd)
    rezip(archive, OUT / "bad_missing_record.pt", drop={"archive/data/0"})
    rezip(archive, OUT / "bad_big_endian.pt", replace={"archive/byteorder": b"big"})
    # BYTEARRAY8 (protocol 5): a real opcode, but not one torch.save emits.
    unknown_opcode = pickle.dumps({"x": bytearray(b"ab")}, protocol=5)
    rezip(archive, OUT / "bad_unknown_opcode.pt", replace={"archive/data.pkl": unknown_opcode})
    print("BYTEARRAY8 at offset", unknown_opcode.index(0x96))
    # A classic payload: os.system("true"). Hand-assembled (pickle itself would write `posix.system` on Linux).
    # The reader must refuse at GLOBAL, before REDUCE could call anything.
    os_system = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."
    rezip(archive, OUT / "bad_unknown_global.pt", replace={"archive/data.pkl": os_system})
    # The same through STACK_GLOBAL (protocol 4): builtins.eval("1+1").
    eval_call = b"\x80\x04\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94\x8c\x031+1\x94\x85\x94R\x94."
    assert pickle.loads(eval_call) == 2  # proves the bytes are the payload they claim to be
    rezip(archive, OUT / "bad_unknown_stack_global.pt", replace={"archive/data.pkl": eval_call})
    torch.save(sd, OUT / "bad_legacy.pt", _use_new_zipfile_serialization=False)
    # A list that contains itself.
    cyclic = b"\x80\x02]q\x00h\x00a."
    rezip(archive, OUT / "bad_cyclic.pt", replace={"archive/data.pkl": cyclic})
    # "Billion laughs": each list holds the previous one twice; 40 levels expand to 2^40 values.
    level = lambda i: pickle.MARK + pickle.BINGET + bytes([i]) + pickle.BINGET + bytes([i]) + pickle.LIST + \
        pickle.BINPUT + bytes([i + 1])
    laughs = b"\x80\x02]q\x00" + b"".join(level(i) for i in range(40)) + pickle.STOP
    rezip(archive, OUT / "bad_expansion.pt", replace={"archive/data.pkl": laughs})

    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total} bytes, to {os.path.relpath(OUT)}")


if __name__ == "__main__":
    main()
