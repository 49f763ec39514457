"""Reading the small JSON files a checkpoint or a session is made of: config.json, the safetensors
index, generation_config.json, tokenizer_config.json, saved chats.

One reader, so every such file fails the same way: a one-line `DGemmaError` that names the file and
says what is wrong with it, never a traceback and never a message that leaves the user guessing
which of a model directory's files is broken.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from .errors import DGemmaError


def open_regular(path: str | Path) -> BinaryIO:
    """`path` opened for binary reading, refused (one line) unless it is a regular file.

    Opened non-blocking and checked on the open descriptor, so a FIFO or a device under a checkpoint's
    file name is refused at once instead of hanging the reader, with no window between check and open.
    Raises `FileNotFoundError` (and other `OSError`s) as `open` would.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device"
            raise DGemmaError(f"{path}: not a regular file ({kind})")
        return open(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def read_json_object(
    path: str | Path,
    *,
    missing: str = "not found",
    invalid: str = "not valid JSON",
    not_object: str = "expected a JSON object",
) -> dict[str, Any]:
    """The JSON object in `path`, or one `DGemmaError` line naming the file.

    `{path}: {missing}` when the file does not exist, `{path}: {invalid} ({reason})` when it is not
    UTF-8 JSON, `{path}: {not_object}` for any other JSON value, `{path}: not a regular file (...)` for
    a directory or FIFO (never opened blocking), and `{path}: {reason}` when the system cannot read it.
    """
    path = Path(path)
    try:
        with open_regular(path) as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise DGemmaError(f"{path}: {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DGemmaError(f"{path}: {invalid} ({e})") from None
    except OSError as e:
        raise DGemmaError(f"{path}: {e.strerror or e}") from None
    if not isinstance(data, dict):
        raise DGemmaError(f"{path}: {not_object}")
    return data


def read_json_object_or_empty(path: str | Path) -> dict[str, Any]:
    """`read_json_object`, but an absent, unreadable or malformed file counts as `{}`.

    For optional hints (extra EOS ids, whether a chat template exists) where a broken file must not
    stop a model from loading: the files that matter are read strictly elsewhere.
    """
    try:
        return read_json_object(path)
    except DGemmaError:
        return {}
