# Generated from reference/files.py by `llmkata exercises`. This copy is yours: replace each stub.
"""Writing files all or nothing.

A file is written under a temporary name in the same folder, flushed to disk, then renamed over its target with
`os.replace`, which is atomic on POSIX and Windows: a reader, or a run killed half-way, sees the complete old file
or the complete new one, never half of either. The temporary file must sit in the same folder (the same file
system), or the rename would become a copy.
"""

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; renamed over `path` if the block succeeds, removed if it fails.

    Example: `with atomic_path("model.safetensors") as tmp: save_file(tensors, tmp)`
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        # mkstemp makes the file private (0600), and a writer may replace it with a private file of its own
        # (safetensors writes its own temporary file and renames it over ours), so the mode is set last.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # an ordinary file, as open() would have made it
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())  # on disk before the rename makes it visible
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))
