"""The real Gemma 4 vocabulary for tests, built from the Apache-2.0 `maxtext` wheel on PyPI.

Google's DiffusionGemma tokenizer files cannot be fetched in CI (no hub access), but the Gemma 4
SentencePiece model (262,144 ids) ships inside the maxtext wheel. `gemma4_tokenizer_dir` downloads
the wheel with pip (no install: maxtext needs Python >= 3.12), extracts
`maxtext/assets/tokenizers/tokenizer_gemma4.model`, converts it with transformers' own slow->fast
Gemma converter to a `tokenizer.json`, and writes a `tokenizer_config.json` and a
`chat_template.jinja`. The result is cached on disk, keyed by wheel version and recipe, so only the
first run pays for the download (~14 MB) and the conversion (a few seconds).

The chat template is a TEST STAND-IN (see `CHAT_TEMPLATE`): Google's chat_template.jinja is not
available offline, and neither transformers nor the maxtext wheel ships a Gemma 4 template.

A failed download raises `Gemma4AssetError`: tests that need the vocabulary fail rather than skip,
since CI has PyPI access. `DGEMMA_MAXTEXT_WHEEL=/path/to/maxtext-0.2.5-py3-none-any.whl` uses a
local copy of the wheel instead (its hash is still checked); `DGEMMA_TEST_CACHE` moves the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MAXTEXT_VERSION = "0.2.5"
MAXTEXT_WHEEL = f"maxtext-{MAXTEXT_VERSION}-py3-none-any.whl"
# Pinned so a changed upstream artifact cannot silently change the test vocabulary.
MAXTEXT_WHEEL_SHA256 = "2fe8e4ffc3a06bd06f94daeaaf5fe3ecee748bb6f661c0f426e07e2ca10c9406"
SPM_MEMBER = "maxtext/assets/tokenizers/tokenizer_gemma4.model"
SPM_SHA256 = "9f318ac4dc02f8580e3f65ff0b37286e7c3d1e5d664737bb2c8ca812b5453162"

GEMMA4_VOCAB_SIZE = 262144
# The chat-format ids, plus `<|think|>` (98) and "\n" (107), read from the SentencePiece model itself.
GEMMA4_SPECIAL_IDS = {
    "<pad>": 0,
    "<eos>": 1,
    "<bos>": 2,
    "<|tool_response>": 50,
    "<|think|>": 98,
    "<|channel>": 100,
    "<channel|>": 101,
    "<|turn>": 105,
    "<turn|>": 106,
}
NEWLINE_ID = 107

# Bump when the conversion or the files written change, so stale caches are rebuilt.
RECIPE_VERSION = 1

# User-defined SentencePiece pieces shaped like Gemma's markup markers (`<|turn>`, `<turn|>`,
# `<|"|>`, `<unused12>`, `<mask>`, `[multimodal]`) are flagged special, so `skip_special_tokens`
# hides them, as in Google's tokenizer.json (third-party Gemma 4 fixtures mark `<|channel>`,
# `<channel|>`, `<turn|>`, `<|tool_response>` and `<|"|>` special). Whitespace runs ("\n", "\t\t",
# "▁▁") and HTML tags (`<table>`) stay plain added tokens: they are text.
_SPECIAL_MARKER = re.compile(r"<\|[^<>\s]*>|<[^<>\s]*\|>|<unused\d+>|<mask>|\[multimodal\]")

# TEST STAND-IN, not Google's template. A minimal Gemma 4 chat template written from the prompt
# format documented on ai.google.dev's Gemma 4 prompt-formatting page:
#   <bos> then turns `<|turn>{role}\n{content}<turn|>\n`, roles system/user/model (assistant ->
#   model); generation prompt `<|turn>model\n`; `enable_thinking=True` puts `<|think|>` at the start
#   of the system turn, creating a system turn if there is none. It follows the current (post
#   discussion #15) revision: no empty `<|channel>thought\n<channel|>` after the generation prompt.
# Tool declarations and multimodal parts are deliberately not rendered (the real format is richer
# than a stand-in should guess), so passing tools raises; that also proves `tools` reaches the template.
CHAT_TEMPLATE = """\
{#- dgemma-mlx TEST STAND-IN for Gemma 4's chat template (not Google's file): turns, roles, \
generation prompt and <|think|> only. -#}
{{- bos_token -}}
{%- if tools -%}
    {{- raise_exception('the test stand-in chat template does not render tools') -}}
{%- endif -%}
{%- set thinking = enable_thinking is defined and enable_thinking -%}
{%- set has_system = messages and messages[0]['role'] in ['system', 'developer'] -%}
{%- if thinking or has_system -%}
    {{- '<|turn>system\\n' -}}
    {%- if thinking -%}{{- '<|think|>' -}}{%- endif -%}
    {%- if has_system -%}{{- messages[0]['content'] | trim -}}{%- endif -%}
    {{- '<turn|>\\n' -}}
{%- endif -%}
{%- for message in (messages[1:] if has_system else messages) -%}
    {%- if message['role'] in ['system', 'developer'] -%}
        {{- raise_exception('a system message must come first') -}}
    {%- endif -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{- '<|turn>' + role + '\\n' -}}
    {%- if message['content'] is string -%}
        {{- message['content'] | trim -}}
    {%- else -%}
        {%- for part in message['content'] if part['type'] == 'text' -%}
            {{- part['text'] | trim -}}
        {%- endfor -%}
    {%- endif -%}
    {{- '<turn|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|turn>model\\n' -}}
{%- endif -%}
"""

TOKENIZER_CONFIG = {
    "tokenizer_class": "GemmaTokenizer",
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
    "add_bos_token": True,
    "add_eos_token": False,
    "padding_side": "left",
    "model_max_length": 262144,
}


class Gemma4AssetError(RuntimeError):
    """The Gemma 4 test vocabulary could not be fetched or built (e.g. no network to PyPI)."""


def default_cache_dir() -> Path:
    """`$DGEMMA_TEST_CACHE`, else `$XDG_CACHE_HOME/dgemma-mlx-tests`, else `~/.cache/dgemma-mlx-tests`."""
    if os.environ.get("DGEMMA_TEST_CACHE"):
        return Path(os.environ["DGEMMA_TEST_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dgemma-mlx-tests"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _recipe_key() -> str:
    """Cache key: wheel version plus a hash of everything this module writes besides tokenizer.json."""
    payload = json.dumps([RECIPE_VERSION, CHAT_TEMPLATE, TOKENIZER_CONFIG, _SPECIAL_MARKER.pattern])
    return f"maxtext-{MAXTEXT_VERSION}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def _fetch_wheel(cache_dir: Path) -> Path:
    """The maxtext wheel: `$DGEMMA_MAXTEXT_WHEEL`, the cached copy, or `pip download` from PyPI."""
    local = os.environ.get("DGEMMA_MAXTEXT_WHEEL")
    wheel = Path(local).expanduser() if local else cache_dir / "wheels" / MAXTEXT_WHEEL
    if not wheel.exists():
        if local:
            raise Gemma4AssetError(f"DGEMMA_MAXTEXT_WHEEL={local} does not exist")
        wheel.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
            "--python-version", "3.12", "--only-binary=:all:", "-d", str(wheel.parent),
            f"maxtext=={MAXTEXT_VERSION}",
        ]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Gemma4AssetError(
                f"could not run pip to download maxtext=={MAXTEXT_VERSION}: {exc}"
            ) from exc
        if proc.returncode != 0 or not wheel.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise Gemma4AssetError(
                f"could not download maxtext=={MAXTEXT_VERSION} from PyPI for the Gemma 4 test "
                f"vocabulary (needs network access to PyPI): {tail[0]}"
            )
    if _sha256(wheel) != MAXTEXT_WHEEL_SHA256:
        raise Gemma4AssetError(f"{wheel}: sha256 mismatch, expected {MAXTEXT_WHEEL_SHA256}")
    return wheel


def _extract_spm(wheel: Path, dest: Path) -> Path:
    out = dest / "tokenizer.model"
    with zipfile.ZipFile(wheel) as zf, zf.open(SPM_MEMBER) as src, out.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    if _sha256(out) != SPM_SHA256:
        raise Gemma4AssetError(f"{SPM_MEMBER} in {wheel}: sha256 mismatch")
    return out


def convert_spm_to_fast(spm_path: Path) -> dict:
    """tokenizer.json content for a Gemma SentencePiece model, via transformers' Gemma converter.

    transformers 5.x has no Gemma 4-specific tokenizer class: Gemma 4 checkpoints (and
    `diffusion_gemma`, per transformers' tokenization_auto mapping) use `GemmaTokenizer`, whose
    slow->fast path (`SentencePieceExtractor` + the BPE/byte-fallback/`▁` recipe) reproduces
    SentencePiece's encoding. We then only set which added tokens are special and make the
    post-processor prepend `<bos>`.
    """
    from transformers import GemmaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(spm_path, Path(tmp) / "tokenizer.model")
        tok = GemmaTokenizer.from_pretrained(tmp, add_bos_token=True, add_eos_token=False)
        data = json.loads(tok.backend_tokenizer.to_str())
    for added in data["added_tokens"]:
        content = added["content"]
        added["special"] = added["id"] <= 3 or bool(_SPECIAL_MARKER.fullmatch(content))
    bos = {"SpecialToken": {"id": "<bos>", "type_id": 0}}
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, bos, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}},
    }
    return data


def _check(data: dict) -> None:
    """Fail loudly if the converted vocabulary is not the Gemma 4 one the tests assume."""
    vocab = data["model"]["vocab"]
    ids = dict(vocab)
    ids.update({a["content"]: a["id"] for a in data["added_tokens"]})
    if len(set(ids.values())) != GEMMA4_VOCAB_SIZE:
        raise Gemma4AssetError(
            f"converted vocabulary has {len(set(ids.values()))} ids, not {GEMMA4_VOCAB_SIZE}"
        )
    for token, expected in {**GEMMA4_SPECIAL_IDS, "\n": NEWLINE_ID}.items():
        if ids.get(token) != expected:
            raise Gemma4AssetError(f"converted vocabulary maps {token!r} to {ids.get(token)}, not {expected}")


def build_tokenizer_dir(spm_path: Path, out_dir: Path) -> Path:
    """Write tokenizer.json, tokenizer_config.json and chat_template.jinja for `spm_path` into `out_dir`."""
    data = convert_spm_to_fast(spm_path)
    _check(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2), encoding="utf-8")
    (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    return out_dir


def _resolve_cache(cache_dir: Path | str | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def gemma4_spm_model(cache_dir: Path | str | None = None) -> Path:
    """The Gemma 4 SentencePiece model itself (cached), for parity checks against `sentencepiece`."""
    cache_dir = _resolve_cache(cache_dir)
    path = cache_dir / "spm" / f"maxtext-{MAXTEXT_VERSION}" / "tokenizer.model"
    if path.exists() and _sha256(path) == SPM_SHA256:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".extract-") as tmp:
        os.replace(_extract_spm(_fetch_wheel(cache_dir), Path(tmp)), path)
    return path


def gemma4_tokenizer_dir(cache_dir: Path | str | None = None) -> Path:
    """A directory holding the real Gemma 4 vocabulary as tokenizer.json + configs + stand-in template.

    Built once per (wheel version, recipe) under `cache_dir` and reused; the build goes to a
    temporary sibling first and is renamed into place, so an interrupted or concurrent run never
    leaves a half-written directory behind.
    """
    cache_dir = _resolve_cache(cache_dir)
    final = cache_dir / _recipe_key()
    if (final / "tokenizer.json").exists():
        return final
    spm = gemma4_spm_model(cache_dir)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as tmp:
        staging = build_tokenizer_dir(spm, Path(tmp) / "out")
        try:
            staging.rename(final)
        except OSError:
            if not (final / "tokenizer.json").exists():  # lost a race only if the winner finished
                raise
    return final
