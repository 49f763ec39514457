"""Text files a command reads and may rewrite: refused when binary, replaced only atomically, with a backup.

Why a module of its own: `dgemma edit --in-place` is the one path that writes over a user's file,
so every rule that keeps that safe lives here, in plain Python (checked before a model loads):
- a file is read once, as bytes, and kept with a snapshot (inode, size, mtime, the bytes), so a file
  that changed on disk while the model worked is detected and refused rather than overwritten;
- binary files (a NUL byte, or bytes that are not UTF-8) are refused; only regular files are read (a
  FIFO or device would block or never end);
- the new text is written to a temporary file in the same directory, flushed to disk, given the old
  file's permissions, and renamed over the original (`os.replace`, atomic on POSIX): a kill at any
  moment leaves either the old file or the new one, never a mix. The backup is a hard link to the
  original (a copy where links are not possible) under a name that does not exist yet.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import DGemmaError

BINARY_PROBE = 8192  # bytes searched for NUL, as git and grep decide "binary"
BACKUP_SUFFIX = ".bak"


@dataclass(frozen=True)
class TextFile:
    """A file as read: where it really lives (symlinks resolved), its bytes, text and identity."""

    path: Path  # the path as the user gave it
    real: Path  # what is read and replaced (a symlink's target)
    data: bytes
    text: str
    identity: tuple[int, int, int, int]  # (device, inode, size, mtime_ns)


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def decode_text(data: bytes, name: str) -> str:
    """UTF-8 text, or a one-line error saying why the bytes are not a text file."""
    if b"\0" in data[:BINARY_PROBE]:
        raise DGemmaError(f"{name}: binary file (it contains NUL bytes); only text files can be edited")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DGemmaError(
            f"{name}: not a UTF-8 text file (byte 0x{data[e.start]:02x} at offset {e.start})"
        ) from None


def read_text_file(path: str | os.PathLike[str], what: str = "file") -> TextFile:
    """Read a regular UTF-8 text file whole; missing, a directory, special or binary is one line."""
    path = Path(path)
    name = os.fspath(path)
    real = Path(os.path.realpath(path))
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise DGemmaError(f"{name}: no such {what}") from None
    if stat.S_ISDIR(st.st_mode):
        raise DGemmaError(f"{name}: is a directory, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise DGemmaError(f"{name}: not a regular file")
    with open(real, "rb") as f:
        data = f.read()
        identity = _identity(os.fstat(f.fileno()))
    return TextFile(path, real, data, decode_text(data, name), identity)


def ensure_unchanged(source: TextFile) -> None:
    """Refuse (one line) when the file on disk is no longer the one read: moved, replaced or edited."""
    name = os.fspath(source.path)
    try:
        st = os.stat(source.real)
        with open(source.real, "rb") as f:
            now = f.read()
    except FileNotFoundError:
        raise DGemmaError(f"{name} was removed during the edit; nothing written") from None
    if _identity(st) != source.identity or now != source.data:
        raise DGemmaError(f"{name} changed on disk during the edit; nothing written (run the edit again)")


def _free_backup_name(real: Path, suffix: str) -> Path:
    candidate = real.with_name(real.name + suffix)
    n = 1
    while os.path.lexists(candidate):
        candidate = real.with_name(f"{real.name}{suffix}.{n}")
        n += 1
    return candidate


def _backup(real: Path, data: bytes, suffix: str) -> Path:
    """The original under a new name: a hard link (same bytes, no copy), else an exclusive copy."""
    while True:
        target = _free_backup_name(real, suffix)
        try:
            os.link(real, target)
            return target
        except FileExistsError:
            continue  # taken between the check and the link: try the next name
        except OSError:
            break
    target = _free_backup_name(real, suffix)
    with open(target, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return target


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def replace_atomically(source: TextFile, new_text: str, backup_suffix: str = BACKUP_SUFFIX) -> Path:
    """Write `new_text` over the file read as `source`, keeping the original as a backup; return the
    backup's path. Refuses a file that changed since it was read (`ensure_unchanged`)."""
    ensure_unchanged(source)
    real = source.real
    mode = stat.S_IMODE(os.stat(real).st_mode)
    fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".dgemma-tmp", dir=real.parent)
    try:
        _write_all(fd, new_text.encode("utf-8"))
        os.fchmod(fd, mode)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        ensure_unchanged(source)  # once more, as close to the rename as possible
        backup = _backup(real, source.data, backup_suffix)
        os.replace(tmp, real)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself made durable
        dir_fd = os.open(real.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return backup
