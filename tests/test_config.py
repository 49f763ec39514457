"""Config parsing: both per-layer serialisations, defaults, forced full last layer, one-line errors."""

import json

import pytest

from dgemma_mlx.config import FULL, SLIDING, ModelConfig, estimate_weight_bytes, parameter_counts
from dgemma_mlx.config import RELEASED_TEXT_CONFIG as RELEASED_TEXT
from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.generation_config import GenerationConfig


def released(**text):
    return {"model_type": "diffusion_gemma", "canvas_length": 256, "text_config": {**RELEASED_TEXT, **text}}


def test_released_geometry_from_legacy_keys():
    t = ModelConfig.from_dict(released()).text
    assert t.full_layers == (5, 11, 17, 23, 29)
    assert all(t.head_dims[i] == (512 if i in t.full_layers else 256) for i in range(30))
    assert all(t.kv_heads[i] == (2 if i in t.full_layers else 8) for i in range(30))


def test_per_layer_config_matches_legacy_and_wins():
    legacy = ModelConfig.from_dict(released()).text
    per_layer = {str(i): {"head_dim": 512, "num_key_value_heads": 2} for i in (5, 11, 17, 23, 29)}
    text = {
        k: v for k, v in RELEASED_TEXT.items() if k not in ("global_head_dim", "num_global_key_value_heads")
    }
    modern = ModelConfig.from_dict(
        {"model_type": "diffusion_gemma", "text_config": {**text, "per_layer_config": per_layer}}
    ).text
    assert modern.head_dims == legacy.head_dims and modern.kv_heads == legacy.kv_heads
    # per_layer_config wins over stale global keys
    both = ModelConfig.from_dict(
        released(per_layer_config={"29": {"head_dim": 128, "num_key_value_heads": 1}})
    )
    assert both.text.head_dims[29] == 128 and both.text.head_dims[5] == 256


def test_defaults_and_forced_full_last_layer():
    cfg = ModelConfig.from_dict(
        {
            "model_type": "diffusion_gemma",
            "text_config": {
                "num_experts": 4,
                "top_k_experts": 2,
                "moe_intermediate_size": 8,
                "num_hidden_layers": 4,
                "layer_types": [SLIDING] * 4,
            },
        }
    )
    t = cfg.text
    assert cfg.canvas_length == 256
    assert t.layer_types == (SLIDING, SLIDING, SLIDING, FULL)
    assert t.head_dims[-1] == 512  # global_head_dim defaults to 512 even when absent
    assert t.kv_heads[-1] == 4  # num_global_key_value_heads absent -> num_key_value_heads
    assert t.sliding_window == 512 and t.rms_norm_eps == 1e-6 and t.final_logit_softcapping == 30.0
    assert t.rope_parameters[FULL]["partial_rotary_factor"] == 0.25
    default_types = ModelConfig.from_dict(
        {"model_type": "diffusion_gemma", "text_config": {**RELEASED_TEXT, "num_hidden_layers": 12}}
    ).text.layer_types
    assert [i for i, lt in enumerate(default_types) if lt == FULL] == [5, 11]


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"model_type": "llama", "text_config": {}}, "unsupported model_type 'llama'"),
        ({"model_type": "diffusion_gemma"}, "missing 'text_config'"),
        ({"model_type": "diffusion_gemma", "text_config": {"hidden_size": 8}}, "missing num_experts"),
        (released(use_bidirectional_attention="all"), "use_bidirectional_attention='all'"),
        (released(layer_types=[SLIDING] * 3), "layer_types has 3 entries"),
        (released(num_key_value_heads=3), "must divide 16 query heads"),
    ],
)
def test_bad_configs_are_one_line_errors(raw, message):
    with pytest.raises(DGemmaError) as err:
        ModelConfig.from_dict(raw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(DGemmaError, match="not found"):
        ModelConfig.from_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(DGemmaError, match="not valid JSON"):
        ModelConfig.from_file(tmp_path / "config.json")


def test_real_geometry_parameter_counts_and_footprint():
    t = ModelConfig.from_dict(released()).text
    counts = parameter_counts(t)
    assert counts["total"] == pytest.approx(25.25e9, rel=0.005)
    assert counts["active"] == pytest.approx(3.84e9, rel=0.01)
    assert counts["experts"] == pytest.approx(22.84e9, rel=0.005)
    four_bit = estimate_weight_bytes(t, bits=4, other_bits=8)
    assert four_bit < 18e9 * 0.9  # leaves room for activations and cache in an 18 GB budget


def test_generation_config_reads_reference_serialisation(tmp_path):
    (tmp_path / "generation_config.json").write_text(
        json.dumps(
            {
                "max_new_tokens": 256,
                "max_denoising_steps": 48,
                "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 0.25},
                "t_min": 0.4,
                "t_max": 0.8,
                "stability_threshold": 1,
                "confidence_threshold": 0.005,
                "eos_token_id": [1, 106, 50],
                "pad_token_id": 0,
                "transformers_version": "5.23.0",
            }
        )
    )
    g = GenerationConfig.from_model_dir(tmp_path)
    assert g.entropy_bound == 0.25 and g.eos_token_id == (1, 106, 50) and g.pad_token_id == 0
    assert GenerationConfig.from_model_dir(tmp_path / "missing") == GenerationConfig()


@pytest.mark.parametrize(
    "override, message",
    [
        ({"max_denoising_steps": 0}, "max_denoising_steps"),
        ({"t_min": 0.9}, "t_max (0.8) must be greater than t_min (0.9)"),
        ({"entropy_bound": -1.0}, "entropy_bound"),
        ({"stability_threshold": -1}, "stability_threshold"),
        ({"confidence_threshold": 0.0}, "confidence_threshold"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"bogus": 1}, "unknown generation parameter"),
    ],
)
def test_generation_config_validation(override, message):
    with pytest.raises(DGemmaError, match=None) as err:
        GenerationConfig().replace(**override)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "key, value",
    [
        ("num_hidden_layers", "four"),
        ("num_hidden_layers", 0),
        ("hidden_size", True),
        ("vocab_size", 12.5),
        ("layer_types", 5),
        ("layer_types", [1, 2, 3]),
        ("rms_norm_eps", "tiny"),
        ("head_dim", "eight"),
        ("rope_parameters", [1]),
        ("sliding_window", -1),
    ],
)
def test_wrong_types_in_text_config_are_one_line_errors(tiny_checkpoint, key, value):
    """A hand-edited config.json: every wrong type is one line naming the file, never a ValueError."""
    import json

    raw = json.loads((tiny_checkpoint / "config.json").read_text())
    raw["text_config"][key] = value
    with pytest.raises(DGemmaError, match="config.json") as exc:
        ModelConfig.from_dict(raw, source="config.json")
    assert "\n" not in str(exc.value)
