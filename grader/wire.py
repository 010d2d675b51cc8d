"""The messages between the trusted grader and the sandboxed worker that runs a submission.

Grader → worker: a pickle (the worker trusts the grader). Worker → grader: never a pickle. A message is a JSON
header and raw byte buffers, and the header's values are only plain data:

    null, booleans, numbers, strings                    as themselves
    {"b": i}                                            bytes: buffer i
    {"l": [...]}, {"t": [...]}, {"s": [...]}            list, tuple, set
    {"d": [[key, value], ...]}                          dict (keys are plain data too)
    {"dtype": "float32"}, {"device": "cpu"}, {"size": [2, 3]}, {"path": "/x"}
    {"tensor": ...}, {"ndarray": ...}                   dtype, shape and a buffer of raw bytes
    {"tensor": id, "view": base, "stride", "offset"}    a view of another tensor's mirror
    {"iter": [...]}                                     items to iterate over (a module's parameters, say)
    {"npdtype": "<u2"}, {"memmap": path, ...}           a numpy dtype; a memory map of a file in the worker's folder
    {"obj": id, "type": "Linear", ...}                  an object that stays in the worker: a handle
    {"kept": id}                                        an object the grader keeps, passed back by its id

(a message that is not an answer asks the grader to call an object it keeps: {"callback": ...}, in the same
terms), so whatever the submission does, the grader only ever reads numbers, strings and bytes from it.
"""

from __future__ import annotations

import json
import struct

MAX_HEADER = 64 * 2**20
MAX_BUFFERS = 1 << 20
MAX_MESSAGE = 2**31


class WireError(Exception):
    """A message that breaks the format: the worker is not trusted to send a well-formed one."""


def _read_exactly(stream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            raise EOFError("the worker closed the connection")
        data += chunk
    return data


def write_frame(stream, payload: bytes) -> None:
    stream.write(struct.pack("<Q", len(payload)) + payload)
    stream.flush()


def read_frame(stream, limit: int = MAX_MESSAGE) -> bytes:
    (size,) = struct.unpack("<Q", _read_exactly(stream, 8))
    if size > limit:
        raise WireError(f"a message of {size} bytes is larger than the {limit} allowed")
    return _read_exactly(stream, size)


def write_data(stream, header: dict, buffers: list[bytes]) -> None:
    text = json.dumps(header, allow_nan=True).encode("utf-8")
    parts = [struct.pack("<QQ", len(text), len(buffers)), text]
    for buffer in buffers:
        parts += [struct.pack("<Q", len(buffer)), bytes(buffer)]
    write_frame(stream, b"".join(parts))


def read_data(stream) -> tuple[dict, list[bytes]]:
    frame = memoryview(read_frame(stream))
    try:
        size, count = struct.unpack_from("<QQ", frame, 0)
        if size > MAX_HEADER or count > MAX_BUFFERS:
            raise WireError("a header or a buffer count past its limit")
        at = 16
        header = json.loads(bytes(frame[at:at + size]).decode("utf-8"))
        at += size
        buffers = []
        for _ in range(count):
            (length,) = struct.unpack_from("<Q", frame, at)
            at += 8
            if at + length > len(frame):
                raise WireError("a buffer runs past the end of its message")
            buffers.append(bytes(frame[at:at + length]))
            at += length
    except (struct.error, UnicodeDecodeError, ValueError) as error:
        raise WireError(f"a malformed message: {error}") from None
    if not isinstance(header, dict):
        raise WireError("a message's header is not an object")
    return header, buffers


# ------------------------------------------------------------- plain values, with nothing kept on either side
# (what a world's ranks return to the grader: spec/worlds.py says a task returns tensors, numbers, lists and dicts)

def encode_plain(value, buffers: list[bytes]):
    """`value` as header data and buffers; TypeError for anything that is not plain data."""
    import torch

    from llmkata.worker import tensor_bytes
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        buffers.append(tensor_bytes(value.detach()))
        return {"tensor": {"dtype": str(value.dtype).removeprefix("torch."), "shape": list(value.shape),
                           "data": len(buffers) - 1}}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.Size):
        return {"size": list(value)}
    if isinstance(value, (list, tuple)):
        return {"l" if isinstance(value, list) else "t": [encode_plain(v, buffers) for v in value]}
    if isinstance(value, dict):
        return {"d": [[encode_plain(k, buffers), encode_plain(v, buffers)] for k, v in value.items()]}
    raise TypeError(f"a world's task must return plain data (tensors, numbers, strings, lists, dicts), not "
                    f"{type(value).__name__}")


def decode_plain(node, buffers: list[bytes]):
    """The value `encode_plain` made, read as data only; WireError for anything else."""
    import torch

    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if not isinstance(node, dict) or len(node) != 1:
        raise WireError("a plain value must be one tagged object")
    (tag, body), = node.items()
    if tag in ("l", "t") and isinstance(body, list):
        items = [decode_plain(v, buffers) for v in body]
        return items if tag == "l" else tuple(items)
    if tag == "d" and isinstance(body, list):
        return {_key(decode_plain(k, buffers)): decode_plain(v, buffers) for k, v in body}
    if tag == "dtype" and isinstance(getattr(torch, str(body), None), torch.dtype):
        return getattr(torch, str(body))
    if tag == "size" and isinstance(body, list):
        return torch.Size(int(n) for n in body)
    if tag == "tensor" and isinstance(body, dict):
        from llmkata.worker import from_bytes
        dtype = getattr(torch, str(body.get("dtype")), None)
        if not isinstance(dtype, torch.dtype):
            raise WireError(f"unknown dtype {body.get('dtype')!r}")
        try:
            return from_bytes(str(body["dtype"]), [int(n) for n in body["shape"]], "cpu", buffers[int(body["data"])])
        except (KeyError, IndexError, ValueError, RuntimeError) as error:
            raise WireError(f"a malformed tensor ({error})") from None
    raise WireError(f"an unknown plain value {tag!r}")


def _key(key):
    if isinstance(key, (list, dict)):
        raise WireError("a dict key must be hashable")
    return key
