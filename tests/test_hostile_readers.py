"""Hostile checkpoints (#22): every way a reader's input can be broken or point elsewhere is one line.

Generated variants per reader, through the real CLI (`dgemma info -m DIR`, `dgemma convert DIR -o OUT`):
safetensors headers (truncated, wrong types, wrong shapes, oversize), the safetensors index (wrong types,
hostile shard names: `..`, absolute paths, symlinks leaving the directory, FIFOs, directories), and the
side files convert copies (corrupt tokenizer JSON, chat templates that do not parse, configs with wrong
types). Each must exit 1 with exactly one `error:` line, no traceback, nothing on stdout and no output
directory. Nothing outside the model directory is read: files placed outside are valid, so a reader
that followed a hostile name would succeed and the test would fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from test_convert import write_hf_checkpoint
from typer.testing import CliRunner

from dgemma_mlx import hub
from dgemma_mlx.cli.app import app
from dgemma_mlx.convert import output as output_module
from dgemma_mlx.convert import source as source_module
from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.loading import MAX_HEADER_BYTES, safetensors_header

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    return {
        "sharded": write_hf_checkpoint(root / "sharded", "float32", max_shard_size="200KB"),
        "single": write_hf_checkpoint(root / "single", "float32", side_files=True),
    }


@pytest.fixture
def source(pristine, tmp_path) -> Callable[[str], Path]:
    def copy(kind: str = "sharded") -> Path:
        return Path(shutil.copytree(pristine[kind], tmp_path / "model"))

    return copy


@pytest.fixture(autouse=True)
def no_hang():
    """A reader that blocks (a FIFO opened for reading) fails the test instead of hanging the suite."""

    def fail(signum, frame):
        raise TimeoutError("a reader hung")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_one_line(result, *needles: str) -> str:
    """Exit 1, one `error:` line (the last on stderr) holding every needle, no traceback, no stdout."""
    stderr = result.stderr.strip()
    assert result.exit_code == 1, (result.exit_code, result.stdout, stderr, result.exception)
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and stderr.endswith(errors[0]), stderr
    assert result.stdout == "", result.stdout
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def check_both(model: Path, tmp_path: Path, *needles: str) -> None:
    """`dgemma info` and `dgemma convert` refuse `model` with one line; convert leaves no OUT behind."""
    assert_one_line(invoke("info", "-m", str(model)), *needles)
    out = tmp_path / "out"
    assert_one_line(invoke("convert", str(model), "-o", str(out)), *needles)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.*")), list(tmp_path.iterdir())


def test_the_pristine_sources_pass(source, tmp_path):
    """The baseline every variant breaks: info and convert succeed on the untouched copies."""
    model = source("sharded")
    assert invoke("info", "-m", str(model)).exit_code == 0
    result = invoke("convert", str(model), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.stderr


# ---------------------------------------------------------------------------- safetensors headers


def split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def rewrite(path: Path, header_bytes: bytes, data: bytes) -> None:
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + data)


def first_entry(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


def entry_edit(change: Callable[[dict], None]) -> Callable[[dict], dict]:
    def edit(header: dict) -> dict:
        change(header[first_entry(header)])
        return header

    return edit


def set_(field, value):
    return entry_edit(lambda e: e.__setitem__(field, value))


def drop(field):
    return entry_edit(lambda e: e.pop(field))


HEADER_EDITS: dict[str, Callable[[dict], object]] = {
    "array": lambda h: list(h),
    "string": lambda h: "header",
    "number": lambda h: 7,
    "null": lambda h: None,
    "entry-not-object": lambda h: {**h, first_entry(h): 5},
    "entry-list": lambda h: {**h, first_entry(h): [1, 2]},
    "no-offsets": drop("data_offsets"),
    "offsets-string": set_("data_offsets", "0,4"),
    "offsets-one": set_("data_offsets", [0]),
    "offsets-three": set_("data_offsets", [0, 4, 8]),
    "offsets-negative": set_("data_offsets", [-4, 4]),
    "offsets-reversed": set_("data_offsets", [8, 4]),
    "offsets-float": set_("data_offsets", [0.0, 4.5]),
    "offsets-bool": set_("data_offsets", [False, True]),
    "offsets-null": set_("data_offsets", None),
    "offsets-past-end": set_("data_offsets", [0, 10**12]),
    "no-dtype": drop("dtype"),
    "dtype-int": set_("dtype", 3),
    "no-shape": drop("shape"),
    "shape-string": set_("shape", "4x4"),
    "shape-negative": set_("shape", [-1, 4]),
    "shape-float": set_("shape", [2.5]),
    "shape-nested": set_("shape", [[4]]),
}


@pytest.mark.parametrize("kind", sorted(HEADER_EDITS))
def test_malformed_header_variants(kind, source, tmp_path):
    model = source("sharded")
    shard = sorted(model.glob("model-*.safetensors"))[0]
    header, data = split(shard)
    rewrite(shard, json.dumps(HEADER_EDITS[kind](header)).encode(), data)
    check_both(model, tmp_path, shard.name)


RAW_CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda raw: b"",
    "four-bytes": lambda raw: raw[:4],
    "length-only": lambda raw: raw[:8],
    "cut-in-header": lambda raw: raw[:20],
    "cut-in-data": lambda raw: raw[: len(raw) // 2],
    "not-json": lambda raw: struct.pack("<Q", 9) + b"{not json" + raw[8:],
    "not-utf8": lambda raw: struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc" + raw[8:],
    "deep-nesting": lambda raw: struct.pack("<Q", 200_000) + b"[" * 200_000,
    "length-past-file": lambda raw: struct.pack("<Q", 10**6) + raw[8:100],
}


@pytest.mark.parametrize("kind", sorted(RAW_CORRUPTIONS))
def test_truncated_and_garbled_shard_variants(kind, source, tmp_path):
    model = source("sharded")
    shard = sorted(model.glob("model-*.safetensors"))[-1]
    shard.write_bytes(RAW_CORRUPTIONS[kind](shard.read_bytes()))
    check_both(model, tmp_path, shard.name)


@pytest.mark.parametrize("claimed", [MAX_HEADER_BYTES + 1, 2**40, 2**64 - 1])
def test_oversize_header_is_refused_before_it_is_read(claimed, source, tmp_path, monkeypatch):
    """Only the 8-byte length and a short body: the claim alone is refused, the body is never read."""
    model = source("single")
    shard = next(model.glob("*.safetensors"))
    shard.write_bytes(struct.pack("<Q", claimed) + b"{" + b" " * 64)
    reads: list[int] = []
    real_loads = json.loads
    monkeypatch.setattr(json, "loads", lambda s, *a, **k: reads.append(len(s)) or real_loads(s, *a, **k))
    with pytest.raises(DGemmaError, match="exceeds the format's limit"):
        safetensors_header(shard)
    assert reads == []
    monkeypatch.undo()
    check_both(model, tmp_path, shard.name, "limit")


# ---------------------------------------------------------------------------- the index


def edit_index(model: Path, change: Callable[[dict], object]) -> None:
    path = model / INDEX
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def with_map(value):
    return lambda index: {**index, "weight_map": value}


def one_entry(value):
    def change(index):
        key = next(iter(index["weight_map"]))
        index["weight_map"][key] = value
        return index

    return change


INDEX_EDITS = {
    "array": lambda index: [index],
    "no-weight-map": lambda index: {"metadata": {}},
    "map-list": with_map([["a", "b"]]),
    "map-string": with_map("model.safetensors"),
    "map-null": with_map(None),
    "value-int": one_entry(5),
    "value-null": one_entry(None),
    "value-list": one_entry(["model-00001-of-00002.safetensors"]),
    "value-object": one_entry({"file": "x"}),
    "value-empty": one_entry(""),
    "value-nul": one_entry("model\u0000.safetensors"),
}


@pytest.mark.parametrize("kind", sorted(INDEX_EDITS))
def test_malformed_index_variants(kind, source, tmp_path):
    model = source("sharded")
    edit_index(model, INDEX_EDITS[kind])
    check_both(model, tmp_path, INDEX)


def test_index_that_is_not_json(source, tmp_path):
    model = source("sharded")
    (model / INDEX).write_text('{"weight_map": {')
    check_both(model, tmp_path, INDEX)


def place_outside(model: Path, tmp_path: Path) -> Path:
    """A valid copy of the model's first shard outside the model directory."""
    shard = sorted(model.glob("model-*.safetensors"))[0]
    outside = tmp_path / "elsewhere" / shard.name
    outside.parent.mkdir(exist_ok=True)
    shutil.copy(shard, outside)
    return outside


def hostile_name(kind: str, model: Path, tmp_path: Path) -> str:
    """Point the first shard's index entries at a hostile name; return the name."""
    shard = sorted(model.glob("model-*.safetensors"))[0]
    outside = place_outside(model, tmp_path)
    if kind == "dotdot":
        name = f"../elsewhere/{shard.name}"
        shutil.copy(shard, model.parent / shard.name)
    elif kind == "dotdot-inner":
        (model / "sub").mkdir()
        name = f"sub/../../elsewhere/{shard.name}"
    elif kind == "absolute":
        name = str(outside)
    elif kind == "etc-passwd":
        name = "/etc/passwd"
    elif kind == "symlink-out":
        name = "link.safetensors"
        (model / name).symlink_to(outside)
    elif kind == "symlink-dir-out":
        (model / "linked").symlink_to(outside.parent, target_is_directory=True)
        name = f"linked/{shard.name}"
    elif kind == "symlink-loop":
        name = "loop.safetensors"
        (model / name).symlink_to(model / name)
    elif kind == "fifo":
        name = "pipe.safetensors"
        os.mkfifo(model / name)
    elif kind == "directory":
        name = "adir.safetensors"
        (model / name).mkdir()
    else:
        raise AssertionError(kind)
    weight_map = json.loads((model / INDEX).read_text())["weight_map"]
    for key, value in list(weight_map.items()):
        if value == shard.name:
            weight_map[key] = name
    (model / INDEX).write_text(json.dumps({"weight_map": weight_map}))
    shard.unlink()  # the only copy left is the hostile target
    return name


HOSTILE = ["dotdot", "dotdot-inner", "absolute", "etc-passwd", "symlink-out", "symlink-dir-out",
           "symlink-loop", "fifo", "directory"]  # fmt: skip


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_shard_names_in_the_index(kind, source, tmp_path):
    model = source("sharded")
    hostile_name(kind, model, tmp_path)
    check_both(model, tmp_path, INDEX)


@pytest.mark.parametrize("kind", ["symlink-out", "fifo", "directory"])
def test_hostile_shards_found_without_an_index(kind, source, tmp_path):
    """No index: the `*.safetensors` glob is held to the same rules."""
    model = source("single")
    shard = next(model.glob("*.safetensors"))
    if kind == "symlink-out":
        outside = tmp_path / "elsewhere.safetensors"
        shutil.move(shard, outside)
        shard.symlink_to(outside)
    elif kind == "fifo":
        os.mkfifo(model / "extra.safetensors")
        shard = model / "extra.safetensors"
    else:
        (model / "extra.safetensors").mkdir()
        shard = model / "extra.safetensors"
    check_both(model, tmp_path, shard.name)


def hf_cache_snapshot(pristine: Path, cache: Path) -> Path:
    """`models--org--name/snapshots/REV/FILE -> ../../blobs/HASH`, as huggingface_hub lays out its cache."""
    repo = cache / "models--org--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(pristine.iterdir())):
        shutil.copy(f, blobs / f"blob{i}")
        (snap / f.name).symlink_to(Path("../../blobs") / f"blob{i}")
    return snap


def test_a_hugging_face_cache_snapshot_of_symlinks_still_loads(pristine, tmp_path):
    snap = hf_cache_snapshot(pristine["sharded"], tmp_path / "hub")
    result = invoke("info", "-m", str(snap))
    assert result.exit_code == 0, result.stderr
    result = invoke("convert", str(snap), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.stderr


def test_a_cache_snapshot_symlink_leaving_its_repo_folder_is_refused(pristine, tmp_path):
    snap = hf_cache_snapshot(pristine["sharded"], tmp_path / "hub")
    shard = sorted(snap.glob("model-*.safetensors"))[0]
    outside = tmp_path / "hub" / "stolen.safetensors"  # inside the cache, outside models--org--tiny
    shutil.copy(shard.resolve(), outside)
    shard.unlink()
    shard.symlink_to(outside)
    check_both(snap, tmp_path, shard.name, "outside the model directory")


# ---------------------------------------------------------------------------- convert's side files


SIDE_CORRUPTIONS: dict[str, tuple[str, bytes]] = {
    "tokenizer-not-json": ("tokenizer.json", b'{"model": '),
    "tokenizer-array": ("tokenizer.json", b"[]"),
    "tokenizer-not-utf8": ("tokenizer.json", b"\xff\xfe{}"),
    "tokenizer-not-a-tokenizer": ("tokenizer.json", b'{"model": {"type": "NoSuchModel"}}'),
    "tokenizer-empty-object": ("tokenizer.json", b"{}"),
    "tokenizer-config-not-json": ("tokenizer_config.json", b"{'a': 1}"),
    "tokenizer-config-bad-template": ("tokenizer_config.json", b'{"chat_template": "{% for m in %}"}'),
    "tokenizer-config-template-int": ("tokenizer_config.json", b'{"chat_template": 5}'),
    "tokenizer-config-template-list": ("tokenizer_config.json", b'{"chat_template": [{"name": "x"}]}'),
    "template-unclosed-for": ("chat_template.jinja", b"{% for m in messages %}{{ m }}"),
    "template-unclosed-expr": ("chat_template.jinja", b"{{ messages "),
    "template-unknown-tag": ("chat_template.jinja", b"{% frobnicate %}"),
    "template-not-utf8": ("chat_template.jinja", b"\xff{{ messages }}"),
    "special-tokens-not-json": ("special_tokens_map.json", b"nope"),
    "generation-config-array": ("generation_config.json", b"[1, 2]"),
}


@pytest.mark.parametrize("kind", sorted(SIDE_CORRUPTIONS))
def test_corrupt_side_files_are_refused_before_any_work(kind, source, tmp_path):
    model = source("single")
    name, content = SIDE_CORRUPTIONS[kind]
    (model / name).write_bytes(content)
    out = tmp_path / "out"
    assert_one_line(invoke("convert", str(model), "-o", str(out)), name)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize("kind", ["symlink-out", "fifo", "directory"])
def test_hostile_side_files_are_refused(kind, source, tmp_path):
    model = source("single")
    target = model / "tokenizer.json"
    target.unlink()
    if kind == "symlink-out":
        outside = tmp_path / "secret.json"
        outside.write_text('{"secret": 1}')  # valid: only containment can refuse it
        target.symlink_to(outside)
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    out = tmp_path / "out"
    assert_one_line(invoke("convert", str(model), "-o", str(out)), "tokenizer.json")
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_templates_using_transformers_syntax_are_accepted(source, tmp_path):
    model = source("single")
    (model / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if loop.index > 3 %}{% break %}{% endif %}"
        "{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
    )
    result = invoke("convert", str(model), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.stderr


CONFIG_EDITS = {
    "layers-string": ("num_hidden_layers", "four"),
    "layers-list": ("num_hidden_layers", [4]),
    "layers-null-object": ("num_hidden_layers", {"n": 4}),
    "layer-types-int": ("layer_types", 5),
    "hidden-size-string": ("hidden_size", "big"),
    "experts-float-string": ("num_experts", "2.5"),
    "vocab-list": ("vocab_size", [128]),
}


@pytest.mark.parametrize("kind", sorted(CONFIG_EDITS))
def test_configs_with_wrong_types_are_refused(kind, source, tmp_path):
    model = source("single")
    key, value = CONFIG_EDITS[kind]
    config = json.loads((model / "config.json").read_text())
    config["text_config"][key] = value
    (model / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert_one_line(invoke("convert", str(model), "-o", str(out)), "config.json")
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_a_corrupt_template_written_to_the_output_is_caught_before_the_rename(source, tmp_path, monkeypatch):
    """Verification reads the side files as written, not only the source's."""
    model = source("single")
    (model / "chat_template.jinja").unlink()
    (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ bos_token }}"}))
    monkeypatch.setattr(
        output_module, "write_chat_template", lambda d: (d / "chat_template.jinja").write_text("{% if %}")
    )
    out = tmp_path / "out"
    assert_one_line(invoke("convert", str(model), "-o", str(out)), "verification", "chat_template.jinja")
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


# ---------------------------------------------------------------------------- hub hint and local typos


@pytest.mark.parametrize(
    ("version", "command"),
    [("0.30.2", "huggingface-cli download"), ("0.34.0", "hf download"), ("1.1.0", "hf download")],
)
def test_the_download_hint_names_the_installed_command(version, command, monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: version)
    assert hub.download_command() == command

    def unreachable(source):
        raise DGemmaError("could not fetch 'org/x' from the Hugging Face Hub (offline)")

    monkeypatch.setattr(source_module, "resolve_model_path", unreachable)
    with pytest.raises(DGemmaError, match=f"`{command} org/x --local-dir DIR`"):
        source_module.resolve_source("org/x")


@pytest.mark.parametrize("typo", ["./nosuch", "models/typo", "models/typo/", "nosuch/dir/deeper"])
def test_a_mistyped_local_path_is_missing_not_fetched(typo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()

    def no_network(*args, **kwargs):
        raise AssertionError("a local typo reached the Hub")

    monkeypatch.setattr(hub, "download", no_network)
    monkeypatch.setattr(hub, "cached_snapshot", no_network)
    assert_one_line(invoke("convert", typo, "-o", str(tmp_path / "out")), typo.rstrip("/"), "no such")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["config.json", INDEX])
@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_json_files_that_are_not_regular_files(name, kind, source, tmp_path):
    """The shared JSON reader never opens a FIFO blocking, nor tries to read a directory."""
    model = source("sharded")
    (model / name).unlink()
    if kind == "fifo":
        os.mkfifo(model / name)
    else:
        (model / name).mkdir()
    check_both(model, tmp_path, name, "not a regular file")
