"""Atomic file writes: a temporary file in the same folder, fsync, then rename.

A reader never sees a half-written file, a crash never truncates an existing
one, and two writers of the same path leave one complete file. The file gets
the mode an ordinary ``open(path, "w")`` would give it (0o666 less the umask),
not the 0o600 of a temporary file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)  # elsewhere: set and restore
    os.umask(umask)
    return umask


def default_mode() -> int:
    """The mode of a newly created file: 0o666 & ~umask (0o644 for the usual umask 022)."""
    return 0o666 & ~_umask()


def atomic_write(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (creating its folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            os.chmod(temporary, default_mode())
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def make_folder(path: Path | str, flag: str = "--out") -> Path:
    """Create the output folder ``path`` (and its parents); one-line PinnzoError when that is impossible
    (a file in the way, no permission, a read-only file system)."""
    from pinnzo.errors import PinnzoError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PinnzoError(f"{flag} {path}: this is a file, not a folder; choose another")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PinnzoError(f"{flag} {path}: cannot create the folder ({error.strerror or type(error).__name__})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PinnzoError(f"{flag} {path}: the folder is not writable; choose another")
    return path
