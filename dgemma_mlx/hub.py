"""Where a model named on the command line lives: a local directory, a name in the models folder, or a
Hugging Face repo id, found in the Hugging Face cache first and downloaded only when it is not there.

The cache comes first so that a model the user already has works on a plane: `--model org/name`
never touches the network once it is cached. When it must be fetched, only the files this package
reads are downloaded (`DOWNLOAD_PATTERNS`), never a checkpoint's vision-only extras or other formats.
huggingface_hub is imported only when a repo id is actually resolved, so `dgemma --help` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from .errors import DGemmaError

# The files a DiffusionGemma checkpoint needs here: weights, configs, chat template, tokenizer.
DOWNLOAD_PATTERNS = [
    "*.safetensors",
    "*.json",
    "*.jinja",
    "tokenizer.model",
]
_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TRUE = {"1", "true", "yes", "on"}


def download_command() -> str:
    """The download command the installed huggingface_hub ships: `hf download` from 0.34 on (the only
    one from 1.0), `huggingface-cli download` before; read from the package metadata, nothing imported."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        parts = re.findall(r"\d+", version("huggingface_hub"))[:2]
        major, minor = (int(p) for p in parts)
    except (PackageNotFoundError, ValueError):
        return "hf download"
    return "hf download" if (major, minor) >= (0, 34) else "huggingface-cli download"


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder, read from the environment now (the library reads it once, at import).

    Same order as huggingface_hub.constants: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME/hub,
    $XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub.
    """
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "huggingface" / "hub"


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or the older TRANSFORMERS_OFFLINE) set to a true value."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(n, "").strip().lower() in _TRUE for n in names)


def looks_like_repo(text: str) -> bool:
    """`owner/name` in the Hub's spelling, and not a path into a local folder that exists.

    `models/my-modle` (a typo under an existing `models/`) is a missing local path, not a repo id, so
    the user hears about the typo instead of a failed download.
    """
    parts = text.split("/")
    if len(parts) != 2 or not all(_REPO_PART.fullmatch(p) for p in parts):
        return False
    return not Path(parts[0]).expanduser().is_dir()


def home_model(name: str) -> Path | None:
    """A bare name (no slash) of a directory in the models folder, where `dgemma convert` writes."""
    if not name or "/" in name or name in (".", ".."):
        return None
    from .catalog import models_home

    found = models_home() / name
    return found if found.is_dir() else None


def _is_complete(snapshot: Path) -> bool:
    """A snapshot we can load: a config and at least one weight file (a partial download is neither)."""
    return (snapshot / "config.json").is_file() and any(snapshot.glob("*.safetensors"))


def cached_snapshot(repo_id: str, cache_dir: Path | None = None) -> Path | None:
    """The cached snapshot of `repo_id` (main's revision), complete enough to load, without the network."""
    from huggingface_hub import snapshot_download

    try:
        found = Path(
            snapshot_download(
                repo_id,
                cache_dir=cache_dir or hub_cache_dir(),
                allow_patterns=DOWNLOAD_PATTERNS,
                local_files_only=True,
            )
        )
    except Exception:  # not cached, or cached incompletely: either way, nothing to use offline
        return None
    return found if _is_complete(found) else None


@contextlib.contextmanager
def _progress_bars(show: bool) -> Iterator[None]:
    """huggingface_hub's own tqdm bars on a terminal; none when stderr is a pipe or a log file."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not show:
        disable_progress_bars()
    try:
        yield
    finally:
        if not show and not was_disabled:
            enable_progress_bars()


def download(repo_id: str, cache_dir: Path | None = None) -> Path:
    """Fetch the files we need into the Hugging Face cache; one line if the Hub cannot be reached."""
    from huggingface_hub import snapshot_download

    cache = cache_dir or hub_cache_dir()
    try:
        with _progress_bars(show=sys.stderr is not None and sys.stderr.isatty()):
            found = Path(snapshot_download(repo_id, cache_dir=cache, allow_patterns=DOWNLOAD_PATTERNS))
    except Exception as e:  # network, auth, missing repo: all end the same way for the user
        raise DGemmaError(
            f"could not fetch {repo_id!r} from the Hugging Face Hub ({_reason(e)}); it is not in the cache "
            f"at {cache} either: connect and retry, or download it elsewhere and pass the local directory"
        ) from None
    if not _is_complete(found):
        raise DGemmaError(f"{repo_id}: the Hugging Face Hub copy has no config.json or *.safetensors weights")
    return found


def _reason(e: Exception) -> str:
    """The error's class, plus its first line when that line is short enough to read."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first and len(first) <= 120 else type(e).__name__


def resolve_model_path(path_or_repo: str | Path) -> Path:
    """A local directory as is; a bare name in the models folder; an `owner/name` from the HF cache or Hub."""
    path = Path(path_or_repo).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DGemmaError(f"{path}: not a model directory")
        return path
    text = str(path_or_repo)
    named = home_model(text)
    if named is not None:
        return named
    if not looks_like_repo(text):
        raise DGemmaError(f"{text}: no such model directory")
    cached = cached_snapshot(text)
    if cached is not None:
        return cached
    if hub_offline():
        raise DGemmaError(
            f"could not fetch {text!r}: it is not in the Hugging Face cache ({hub_cache_dir()}) and the "
            f"Hugging Face Hub is offline (HF_HUB_OFFLINE); run `{download_command()} {text}` while online, "
            "or pass a local directory"
        )
    return download(text)
