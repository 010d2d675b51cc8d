"""The messages between the trusted grader and the sandboxed worker that runs a submission.

Grader → worker: a pickle (the worker trusts the grader). Worker → grader: never a pickle. A message is a JSON
header and raw byte buffers, and the header's values are only plain data:

    null, booleans, numbers, strings                    as themselves
    {"b": i}                                            bytes: buffer i
    {"l": [...]}, {"t": [...]}, {"s": [...]}            list, tuple, set
    {"d": [[key, value], ...]}                          dict (keys are plain data too)
    {"dtype": "float32"}, {"device": "cpu"}, {"size": [2, 3]}, {"path": "/x"}
    {"tensor": ...}, {"ndarray": ...}                   dtype, shape and a buffer of raw bytes
    {"obj": id, "type": "Linear", ...}                  an object that stays in the worker: a handle

so whatever the submission does, the grader only ever reads numbers, strings and bytes from it.
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
