"""Model sizes for training: the shipped geometry resized, or a checkpoint deepened by identity layers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from dgemma_mlx.config import SLIDING, ModelConfig
from dgemma_mlx.model import Model
from dgemma_mlx.sudoku.architecture import MODEL_CONFIG


def model_config(
    layers: int | None = None, hidden: int | None = None, experts: int | None = None, heads: int | None = None
) -> dict:
    """The shipped geometry (MODEL_CONFIG) resized: one full-attention layer last, the rest sliding;
    dense MLP 2x hidden, experts 1x hidden, top-2 routing, query heads sharing KV heads in pairs, head
    dims as shipped (so more heads widen attention beyond `hidden`). None keeps a size.

    Bigger models are for machines with a GPU or Apple silicon (TRAINING.md, run 11: per step each of
    more heads, more layers and a wider model learned faster than the shipped 4 x 128).
    """
    text = dict(MODEL_CONFIG["text_config"])
    layers = text["num_hidden_layers"] if layers is None else layers
    hidden = text["hidden_size"] if hidden is None else hidden
    experts = text["num_experts"] if experts is None else experts
    heads = text["num_attention_heads"] if heads is None else heads
    if heads % 2:
        raise ValueError(f"needs an even number of heads (query heads share KV heads in pairs), got {heads}")
    text |= {
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "moe_intermediate_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads // 2,
        "num_experts": experts,
        "top_k_experts": min(2, experts),
        "layer_types": ["sliding_attention"] * (layers - 1) + ["full_attention"],
    }
    return {**MODEL_CONFIG, "text_config": text}


def grow(init: Path, extra: int) -> tuple[Model, dict]:
    """The checkpoint at `init` deepened by `extra` new sliding layers that start as the identity.

    Why: the shipped 4-layer model plateaued (TRAINING.md, run 7) and a bigger one trained from scratch
    is out of reach of a CPU; a grown model starts at the checkpoint's quality and only has to learn what
    the extra depth adds. A new layer's two residual branches end in RMSNorms whose gains start at zero
    (not its projections: an RMSNorm of a zero vector has a huge gradient), so its output is its input
    (layer scalars 1) in both the encoder and the decoder, while each gain's gradient is non-zero and
    wakes the layer up. New layers go in one after each of the last sliding layers, working backwards
    (4 -> 6: S S new S new F), so the full-attention layer stays last as the reference requires.
    """
    config = json.loads((init / "config.json").read_text())
    text = config["text_config"]
    types = text["layer_types"]
    sliding = [i for i, t in enumerate(types) if t == SLIDING][::-1]
    if not sliding:
        raise ValueError(f"{init} has no sliding-attention layer for new layers to follow")
    after = [sliding[k % len(sliding)] for k in range(extra)]
    order: list[int | None] = []
    for i in range(len(types)):
        order += [i] + [None] * after.count(i)
    text = text | {
        "num_hidden_layers": len(order),
        "layer_types": [SLIDING if i is None else types[i] for i in order],
    }
    config = config | {"text_config": text}
    model = Model(ModelConfig.from_dict(config))
    old = mx.load(str(init / "model.safetensors"))
    new = dict(tree_flatten(model.parameters()))

    position = {i: j for j, i in enumerate(order) if i is not None}

    def renumber(key: str) -> str:
        return re.sub(r"\.layers\.(\d+)\.", lambda m: f".layers.{position[int(m[1])]}.", key)

    moved = {renumber(k): v for k, v in old.items()}
    for j, i in enumerate(order):
        if i is None:
            for norm in ("post_attention_layernorm", "post_feedforward_layernorm"):
                key = f"model.decoder.layers.{j}.{norm}.weight"
                moved[key] = mx.zeros_like(new[key])
    model.load_weights(list((new | moved).items()))
    return model, config
