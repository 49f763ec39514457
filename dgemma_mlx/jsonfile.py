"""Reading the small JSON files a checkpoint or a session is made of: config.json, the safetensors
index, generation_config.json, tokenizer_config.json, saved chats.

One reader, so every such file fails the same way: a one-line `DGemmaError` that names the file and
says what is wrong with it, never a traceback and never a message that leaves the user guessing
which of a model directory's files is broken.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import DGemmaError


def read_json_object(
    path: str | Path,
    *,
    missing: str = "not found",
    invalid: str = "not valid JSON",
    not_object: str = "expected a JSON object",
) -> dict[str, Any]:
    """The JSON object in `path`, or one `DGemmaError` line naming the file.

    `{path}: {missing}` when the file does not exist, `{path}: {invalid} ({reason})` when it is not
    UTF-8 JSON, `{path}: {not_object}` for any other JSON value, and `{path}: {reason}` when the
    system cannot read it (a directory, no permission).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
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
