"""Finding the weights a user already has, and refusing a model the machine cannot hold (issue #20, part 3).

- Hub ids resolve from a Hugging Face cache laid out as huggingface_hub lays it out
  (models--org--name/blobs, snapshots/<rev>/ symlinks, refs/main) with the network blocked: HF_HUB_OFFLINE
  and HTTP(S)_PROXY pointing at a closed port, so any attempt to reach the Hub fails loudly.
- A repo that is not cached, offline or unreachable, is one line that says how to get it.
- `dgemma models` lists the cache's and $DGEMMA_HOME's DiffusionGemma checkpoints (table and --json);
  `dgemma convert` without -o writes into $DGEMMA_HOME.
- The memory guard refuses with one line (naming a smaller conversion or --force) against a
  monkeypatched available-memory figure, and --force loads anyway.
"""

import hashlib
import json
import shutil
from pathlib import Path

import mlx.core as mx
import pytest
from test_convert import write_hf_checkpoint
from tiny_models import word_chat_model
from typer.testing import CliRunner

from dgemma_mlx import memory
from dgemma_mlx.catalog import describe_quantization, list_models
from dgemma_mlx.cli.app import app
from dgemma_mlx.config import ModelConfig, estimate_weight_bytes
from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.hub import DOWNLOAD_PATTERNS, looks_like_repo, resolve_model_path
from dgemma_mlx.loading import load

REPO = "mlx-community/diffusiongemma-tiny-4bit"
REVISION = "0123456789abcdef0123456789abcdef01234567"
CLOSED_PORT = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return word_chat_model(tmp_path_factory.mktemp("word"))


def fake_hf_cache(cache: Path, repo: str, source: Path, revision: str = REVISION) -> Path:
    """Copy `source` into `cache` the way huggingface_hub stores a download: blobs named by hash,
    snapshot files as relative symlinks to them, refs/main naming the revision. Returns the snapshot."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / revision
    (repo_dir / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in sorted(source.iterdir()):
        if f.is_file():
            data = f.read_bytes()
            blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            (snapshot / f.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture()
def no_network(monkeypatch, tmp_path) -> Path:
    """An empty HF cache under tmp_path, HF_HUB_OFFLINE, proxies on a closed port, DGEMMA_HOME empty."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, CLOSED_PORT)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("DGEMMA_HOME", str(tmp_path / "dgemma-home"))
    return cache


def one_line(text: str) -> str:
    """The one error line; the `loading MODEL…` notice before it is progress, not part of the error."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("loading ")]
    assert len(lines) == 1, text
    return lines[0]


# --- Hub ids from the cache, offline -----------------------------------------------------------------


def test_a_cached_repo_resolves_and_loads_with_the_network_blocked(no_network, model_dir):
    snapshot = fake_hf_cache(no_network, REPO, model_dir)
    assert resolve_model_path(REPO) == snapshot
    model, tokenizer = load(REPO)
    assert model.model_dir == snapshot and tokenizer is not None


def test_a_cached_repo_resolves_online_without_asking_the_hub(no_network, model_dir, monkeypatch):
    """Not offline by setting, but the proxies go nowhere: the cache must answer before any request."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    snapshot = fake_hf_cache(no_network, REPO, model_dir)
    assert resolve_model_path(REPO) == snapshot


def test_hf_home_is_honoured(monkeypatch, tmp_path, model_dir, no_network):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    snapshot = fake_hf_cache(tmp_path / "hf-home" / "hub", REPO, model_dir)
    assert resolve_model_path(REPO) == snapshot


def test_not_cached_and_offline_is_one_line_that_says_how_to_get_it(no_network, model_dir):
    with pytest.raises(DGemmaError) as e:
        resolve_model_path("google/not-downloaded")
    message = one_line(str(e.value))
    assert "not in the Hugging Face cache" in message and "hf download google/not-downloaded" in message

    result = CliRunner().invoke(app, ["generate", "-p", "hi", "-m", "google/not-downloaded"])
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith("error: could not fetch 'google/not-downloaded': it is not in")


def test_not_cached_and_the_network_failing_is_one_line(no_network, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    with pytest.raises(DGemmaError) as e:
        resolve_model_path("google/not-downloaded")
    message = one_line(str(e.value))
    assert "could not fetch 'google/not-downloaded' from the Hugging Face Hub" in message
    assert str(no_network) in message  # where it looked first


def test_online_it_asks_the_cache_first_then_downloads_only_what_it_needs_without_a_bar_off_a_tty(
    no_network, model_dir, monkeypatch
):
    """The download call itself, with huggingface_hub's snapshot_download replaced by a recorder."""
    import huggingface_hub
    from huggingface_hub.utils import are_progress_bars_disabled

    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append({**kwargs, "bars_disabled": are_progress_bars_disabled()})
        if kwargs.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        return str(fake_hf_cache(kwargs["cache_dir"], repo_id, model_dir))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert not are_progress_bars_disabled()
    found = resolve_model_path(REPO)
    assert found == no_network / ("models--" + REPO.replace("/", "--")) / "snapshots" / REVISION
    assert [c.get("local_files_only", False) for c in calls] == [True, False]
    assert all(c["allow_patterns"] == DOWNLOAD_PATTERNS and c["cache_dir"] == no_network for c in calls)
    assert calls[1]["bars_disabled"]  # the test runner's stderr is not a terminal
    assert not are_progress_bars_disabled()  # and the setting is given back


def test_a_partial_snapshot_is_not_taken_for_a_model(no_network, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text(json.dumps({"model_type": "diffusion_gemma"}))
    fake_hf_cache(no_network, REPO, partial)
    with pytest.raises(DGemmaError, match="not in the Hugging Face cache"):
        resolve_model_path(REPO)


def test_a_mistyped_local_path_is_a_missing_path_not_a_repo(tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert looks_like_repo(REPO) and not looks_like_repo("models/my-modle")
    assert not looks_like_repo("./x/y") and not looks_like_repo("a/b/c") and not looks_like_repo("/abs")
    result = CliRunner().invoke(app, ["generate", "-p", "hi", "-m", "models/my-modle"])
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith("error: models/my-modle: no such model directory")


def test_a_name_in_dgemma_home_resolves(no_network, tmp_path, model_dir):
    home = tmp_path / "dgemma-home"
    home.mkdir()
    shutil.copytree(model_dir, home / "my-model")
    assert resolve_model_path("my-model") == home / "my-model"
    result = CliRunner().invoke(app, ["info", "-m", "my-model", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model_dir"] == str(home / "my-model")


# --- dgemma models ----------------------------------------------------------------------------------


def quantized_copy(source: Path, dest: Path, embed: object) -> Path:
    """A directory whose config carries a quantization block (weights are the float ones: only sizes and
    config are read by the catalog)."""
    shutil.copytree(source, dest)
    config = json.loads((dest / "config.json").read_text())
    quantization = {"group_size": 64, "bits": 4, "mode": "affine", "model.decoder.embed_tokens": embed}
    config["quantization"] = quantization
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def test_models_lists_the_cache_and_dgemma_home(no_network, tmp_path, model_dir):
    home = tmp_path / "dgemma-home"
    home.mkdir()
    shutil.copytree(model_dir, home / "float-one")
    quantized_copy(model_dir, home / "mixed-one", {"bits": 8, "group_size": 64})
    (home / "not-a-model").mkdir()
    (home / "other-arch").mkdir()
    (home / "other-arch" / "config.json").write_text(json.dumps({"model_type": "gemma3"}))
    snapshot = fake_hf_cache(no_network, REPO, model_dir)
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    fake_hf_cache(no_network, "google/bert-tiny", other)

    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["name"], r["source"], r["quantization"]) for r in rows] == [
        ("float-one", "dgemma-home", "float"),
        ("mixed-one", "dgemma-home", "4-bit affine, mixed"),
        (REPO, "hf-cache", "float"),
    ]
    on_disk = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    tensors = sum(v.nbytes for f in model_dir.glob("*.safetensors") for v in mx.load(str(f)).values())
    config = ModelConfig.from_file(model_dir / "config.json")
    for row in rows:
        assert row["size_on_disk_bytes"] == on_disk
        assert row["estimated_memory_bytes"] == tensors + memory.working_bytes(config)
    assert rows[2]["path"] == str(snapshot)

    table = CliRunner().invoke(app, ["models"])
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["name", "quantization", "on", "disk", "memory", "path"]
    assert len(lines) == 4 and REPO in lines[3] and str(snapshot) in lines[3]  # never cut when piped
    assert "4-bit affine, mixed" in lines[2] and str(home / "mixed-one") in lines[2]


def test_models_with_nothing_found_says_where_it_looked(no_network):
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0 and result.stdout == ""
    assert str(no_network) in one_line(result.stderr)
    assert json.loads(CliRunner().invoke(app, ["models", "--json"]).stdout) == []


def test_quantization_labels():
    assert describe_quantization(None) == "float"
    assert describe_quantization({"bits": 4, "mode": "affine"}) == "4-bit affine, uniform"
    assert describe_quantization({"bits": 3, "mode": "affine", "x.embed_tokens": {"bits": 3}}) == (
        "3-bit affine, uniform"
    )
    experts_only = {"bits": 4, "mode": "mxfp4", "x.embed_tokens": False}
    assert describe_quantization(experts_only) == "mxfp4, experts-only"


def test_convert_without_output_lands_in_dgemma_home_and_is_listed(no_network, tmp_path):
    source = write_hf_checkpoint(tmp_path / "tiny-hf", "bfloat16", side_files=True)
    result = CliRunner().invoke(app, ["convert", str(source)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "dgemma-home" / "tiny-hf-mixed-4bit"
    assert (out / "config.json").is_file() and f"wrote {out}" in result.stdout
    assert f"output: {out}" in result.stderr
    rows = list_models()
    listed = [(r.name, r.quantization, r.path) for r in rows]
    assert listed == [("tiny-hf-mixed-4bit", "4-bit affine, mixed", str(out))]

    uniform = CliRunner().invoke(app, ["convert", str(source), "--recipe", "uniform", "--bits", "8"])
    assert uniform.exit_code == 0, uniform.output
    assert (tmp_path / "dgemma-home" / "tiny-hf-uniform-8bit" / "config.json").is_file()
    assert "tiny-hf-mixed-4bit" in CliRunner().invoke(app, ["models"]).stdout


def test_convert_dry_run_without_output_creates_nothing(no_network, tmp_path):
    source = write_hf_checkpoint(tmp_path / "tiny-hf", "bfloat16")
    result = CliRunner().invoke(app, ["convert", str(source), "--no-quantize", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "tiny-hf-bfloat16" in result.stderr
    assert not (tmp_path / "dgemma-home").exists()


# --- the memory guard -------------------------------------------------------------------------------


def test_a_vision_tower_on_disk_is_not_counted_as_memory(model_dir, tmp_path):
    """Public checkpoints ship the vision tower; loading never reads it, so neither does the estimate."""
    with_vision = shutil.copytree(model_dir, tmp_path / "with-vision")
    config = ModelConfig.from_file(model_dir / "config.json")
    before = memory.estimate_memory_bytes(with_vision, config)
    tower = {"model.vision_tower.encoder.w": mx.zeros((512, 512)), "model.embed_vision.w": mx.zeros((64,))}
    mx.save_safetensors(str(with_vision / "vision.safetensors"), tower)
    assert memory.weight_bytes_on_disk(with_vision) > memory.weight_bytes_on_disk(model_dir) + 512 * 512 * 4
    assert memory.estimate_memory_bytes(with_vision, config) == before


def test_available_memory_is_known_here():
    have = memory.available_memory_bytes()
    assert have is not None and have > 0


def test_the_guard_refuses_with_one_line_and_force_loads(model_dir, monkeypatch):
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 1_000)
    with pytest.raises(DGemmaError) as e:
        load(model_dir)
    message = one_line(str(e.value))
    assert "this machine can give 1.00 KB" in message and "--force" in message
    model, _ = load(model_dir, force=True)
    assert model.model_dir == model_dir

    runner = CliRunner()
    argv = ["generate", "-p", "hi", "-m", str(model_dir), "--max-tokens", "8"]
    refused = runner.invoke(app, argv)
    assert refused.exit_code == 1 and "--force" in one_line(refused.stderr)
    forced = runner.invoke(app, [*argv, "--force"])
    assert forced.exit_code == 0, forced.output
    for command in (["chat"], ["batch", "-", "-o", "unused.jsonl"]):
        assert "--force" in runner.invoke(app, [*command, "--help"]).stdout


def test_the_guard_names_a_smaller_conversion_that_fits(model_dir, monkeypatch, tmp_path):
    config = ModelConfig.from_file(model_dir / "config.json")
    extra = memory.working_bytes(config)
    mixed = estimate_weight_bytes(config.text, 4, 8)
    assert mixed < memory.loaded_weight_bytes(model_dir)  # the float32 test model is bigger than 4-bit mixed
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: mixed + extra + 1)
    with pytest.raises(DGemmaError) as e:
        memory.check_fits(model_dir)
    assert f"`dgemma convert {model_dir} --recipe mixed --bits 4`" in one_line(str(e.value))
    quantized = quantized_copy(model_dir, tmp_path / "q", {"bits": 8, "group_size": 64})
    with pytest.raises(DGemmaError, match=r"`dgemma convert SOURCE --recipe mixed --bits 4`"):
        memory.check_fits(quantized)  # a quantized model is not itself a source to convert
    uniform3 = estimate_weight_bytes(config.text, 3, 3)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: uniform3 + extra + 1)
    with pytest.raises(DGemmaError, match=r"--recipe uniform --bits 3"):
        memory.check_fits(model_dir)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: None)  # unknown: stay out of the way
    memory.check_fits(model_dir)


def test_metal_is_never_touched_off_metal(monkeypatch):
    import mlx.core as mx

    if mx.metal.is_available():
        pytest.skip("this machine has Metal")
    monkeypatch.setattr(mx.metal, "device_info", lambda: pytest.fail("device_info called off Metal"))
    monkeypatch.setattr(mx, "device_info", lambda: pytest.fail("device_info called off Metal"), raising=False)
    assert memory._metal_working_set() is None
