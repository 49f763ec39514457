"""What the commands share: one declaration of the generation options, one key=value parser."""

import pytest
from typer.testing import CliRunner

from dgemma_mlx.cli.app import app
from dgemma_mlx.cli.options import GenerationFlags
from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.generation_config import parse_overrides

SHARED = ["--max-tokens", "--steps", "--entropy-bound", "--t-min", "--t-max", "--seed"]


@pytest.mark.parametrize("command", ["generate", "chat", "batch"])
def test_every_generating_command_has_the_shared_options(command):
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in SHARED:
        assert option in result.stdout, f"{command} lacks {option}"


def test_shared_options_are_checked_before_anything_loads():
    result = CliRunner().invoke(app, ["generate", "-p", "hi", "--steps", "0", "-m", "/nonexistent"])
    assert result.exit_code == 2 and "--steps" in result.output


def test_flags_become_generation_overrides():
    flags = GenerationFlags(max_tokens=64, steps=None, entropy_bound=0.2, seed=3)
    assert flags.overrides == {"max_new_tokens": 64, "entropy_bound": 0.2}


def test_one_parser_for_chat_params_and_benchmark_settings():
    assert parse_overrides("max_tokens=8 steps=4") == {"max_new_tokens": 8, "max_denoising_steps": 4}
    assert parse_overrides("entropy_bound=0.05,max_denoising_steps=96") == {
        "entropy_bound": 0.05,
        "max_denoising_steps": 96,
    }
    assert parse_overrides("eos_token_id=1,106 stability_threshold=none") == {
        "eos_token_id": [1, 106],
        "stability_threshold": None,
    }
    assert parse_overrides("") == {}
    with pytest.raises(DGemmaError, match="not a number"):
        parse_overrides("steps=zero")
    with pytest.raises(DGemmaError, match="key=value"):
        parse_overrides("steps")


@pytest.mark.parametrize("command", ["generate", "chat", "batch"])
@pytest.mark.parametrize("flag, value", [("--entropy-bound", "nan"), ("--t-min", "-1"), ("--t-max", "inf")])
def test_a_bad_generation_flag_is_refused_before_anything_is_read(tmp_path, command, flag, value):
    """The shared options are checked first: the error names the flag's value, not the missing model."""
    batch = [str(tmp_path / "in.txt"), "-o", str(tmp_path / "o")]
    args = {"generate": ["-p", "hi"], "chat": [], "batch": batch}
    result = CliRunner().invoke(app, [command, *args[command], "-m", "/nonexistent", flag, value])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert flag.lstrip("-").replace("-", "_") in lines[0] and "/nonexistent" not in lines[0]
    assert list(tmp_path.iterdir()) == []
