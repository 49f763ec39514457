"""`load()` on HF-format directories: dtypes, sharding, and one-line errors naming file and key."""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
from hf_reference import write_tiny_checkpoint
from safetensors.numpy import load_file, save_file

from dgemma_mlx import DGemmaError, load
from dgemma_mlx.loading import load_model


def single_line_error(fn, *fragments):
    with pytest.raises(DGemmaError) as err:
        fn()
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def first_logits(model):
    cache = model.make_cache(1)
    model.encode(mx.array([[5, 6, 7, 8, 9]]), cache)
    return np.array(model.decode(mx.array([[1, 2, 3, 4, 5, 6, 7, 8]]), cache))


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("sharded"), seed=0, max_shard_size="60KB")


def test_sharded_and_single_file_load_the_same(tiny_checkpoint, sharded):
    assert (sharded / "model.safetensors.index.json").exists()
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    model, tokenizer = load(tiny_checkpoint)
    assert tokenizer is None  # the random test checkpoint ships no tokenizer
    assert np.array_equal(first_logits(model), first_logits(load_model(sharded)[0]))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_checkpoints_load(tmp_path, dtype):
    path = write_tiny_checkpoint(tmp_path / dtype, seed=0, dtype=dtype)
    model = load_model(path, dtype="float32")[0]
    assert model.dtype == mx.float32
    assert np.isfinite(first_logits(model)).all()


def test_missing_shard(tmp_path, sharded):
    broken = shutil.copytree(sharded, tmp_path / "m")
    victim = sorted(broken.glob("model-*.safetensors"))[-1]
    victim.unlink()
    single_line_error(lambda: load(broken), victim.name, "missing shard")


def test_missing_tensor(tmp_path, tiny_checkpoint):
    broken = shutil.copytree(tiny_checkpoint, tmp_path / "m")
    tensors = load_file(broken / "model.safetensors")
    del tensors["model.decoder.layers.1.router.per_expert_scale"]
    save_file(tensors, broken / "model.safetensors")
    single_line_error(lambda: load(broken), "missing tensor model.decoder.layers.1.router.per_expert_scale")


def test_missing_tensor_listed_in_index(tmp_path, sharded):
    broken = shutil.copytree(sharded, tmp_path / "m")
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    key, shard = next(iter(index["weight_map"].items()))
    tensors = load_file(broken / shard)
    del tensors[key]
    save_file(tensors, broken / shard)
    single_line_error(lambda: load(broken), shard, f"missing tensor {key}")


def test_wrong_shape(tmp_path, tiny_checkpoint):
    broken = shutil.copytree(tiny_checkpoint, tmp_path / "m")
    tensors = load_file(broken / "model.safetensors")
    tensors["model.decoder.layers.0.mlp.up_proj.weight"] = np.zeros((47, 32), dtype=np.float32)
    save_file(tensors, broken / "model.safetensors")
    single_line_error(
        lambda: load(broken), "model.safetensors", "mlp.up_proj.weight has shape (47, 32)", "expects (48, 32)"
    )


def test_truncated_file(tmp_path, tiny_checkpoint):
    broken = shutil.copytree(tiny_checkpoint, tmp_path / "m")
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    single_line_error(lambda: load(broken), "model.safetensors", "truncated")


def test_garbage_file(tmp_path, tiny_checkpoint):
    broken = shutil.copytree(tiny_checkpoint, tmp_path / "m")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file at all")
    single_line_error(lambda: load(broken), "model.safetensors", "not a safetensors file")


def test_no_weights_and_no_config(tmp_path, tiny_checkpoint):
    empty = tmp_path / "empty"
    empty.mkdir()
    single_line_error(lambda: load(empty), "config.json", "not found")
    shutil.copy(tiny_checkpoint / "config.json", empty / "config.json")
    single_line_error(lambda: load(empty), "no *.safetensors weights")


def test_unsupported_model_type(tmp_path, tiny_checkpoint):
    broken = shutil.copytree(tiny_checkpoint, tmp_path / "m")
    config = json.loads((broken / "config.json").read_text())
    config["model_type"] = "gemma4"
    (broken / "config.json").write_text(json.dumps(config))
    single_line_error(lambda: load(broken), "unsupported model_type 'gemma4'")


def test_bad_paths(tmp_path, monkeypatch):
    single_line_error(lambda: load(tmp_path / "nope"), "no such model directory")
    (tmp_path / "file").write_text("x")
    single_line_error(lambda: load(tmp_path / "file"), "not a model directory")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    single_line_error(lambda: load("google/not-a-real-dgemma-repo"), "could not fetch", "local directory")


def test_unknown_dtype(tiny_checkpoint):
    single_line_error(lambda: load(tiny_checkpoint, dtype="int3"), "unknown dtype 'int3'")


@pytest.mark.parametrize("header", [b"[1, 2]", b'{"w": {"dtype": "F32", "shape": [1]}}', b'{"w": 3}'])
def test_malformed_safetensors_headers_are_one_line_errors(tmp_path, header):
    """A header that is JSON but not a safetensors header (an array, an entry without offsets)."""
    import struct

    from dgemma_mlx.loading import safetensors_header

    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(DGemmaError, match="not a safetensors file") as exc:
        safetensors_header(path)
    assert "\n" not in str(exc.value)
