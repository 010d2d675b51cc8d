"""The grader's own all-or-nothing file writes (exercises, run files, reports), independent of any implementation.

The data goes to a temporary file in the target's folder, reaches the disk, and is renamed over the target:
a reader, or a command killed half-way, sees the whole old file or the whole new one.
"""

import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path, data: bytes) -> None:
    path = Path(path)
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                     delete=False) as temporary:
        try:
            temporary.write(data)
            temporary.flush()
            os.fsync(temporary.fileno())
        except BaseException:
            os.unlink(temporary.name)
            raise
    umask = os.umask(0o22)
    os.umask(umask)
    os.chmod(temporary.name, 0o666 & ~umask)  # an ordinary file, not the temporary file's private mode
    os.replace(temporary.name, path)


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))
