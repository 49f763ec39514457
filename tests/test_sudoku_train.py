"""The Sudoku training recipe: data transforms, batches, a loss that learns, and the train command."""

import json
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest

from dgemma_mlx.config import ModelConfig
from dgemma_mlx.loading import load
from dgemma_mlx.model import Model
from dgemma_mlx.sampler import entropy, log_probs
from dgemma_mlx.sudoku import ASSETS
from dgemma_mlx.sudoku import tokens as T
from dgemma_mlx.sudoku.architecture import GENERATION_CONFIG, MODEL_CONFIG
from dgemma_mlx.sudoku.puzzles import generate_batch
from training.sudoku import train
from training.sudoku.geometry import grow, model_config
from training.sudoku.pool import Pool, make_batch
from training.sudoku.recipe import draw_rollout, loss_fn, sampler_canvas

TINY = ["--layers", "2", "--hidden", "32", "--experts", "2", "--heads", "2"]


def small_pool() -> Pool:
    return {
        d: [(np.array(p.puzzle), np.array(p.solution)) for p in generate_batch(5, d, 3)]
        for d in ("easy", "medium")
    }


def test_default_geometry_is_the_shipped_checkpoint():
    assert model_config() == model_config(4, 128, 4) == MODEL_CONFIG
    assert json.loads((ASSETS / "config.json").read_text()) == MODEL_CONFIG
    # the sampler settings too: training evaluates with (and --sc-temp defaults to) what ships
    assert json.loads((ASSETS / "generation_config.json").read_text()) == GENERATION_CONFIG


def test_batches_never_corrupt_givens_and_score_only_blanks():
    prompts, canvases, targets, mask = make_batch(
        np.random.default_rng(1), small_pool(), 16, {"easy": 1.0, "medium": 1.0, "hard": 1.0}
    )
    assert prompts.shape == (16, len(T.encode_prompt([0] * 81)))
    assert canvases.shape == targets.shape == mask.shape == (16, T.CANVAS_LENGTH)
    given = np.array(mask) == 0
    assert (np.array(canvases)[given] == np.array(targets)[given]).all()
    assert (np.array(canvases) != np.array(targets)).any()  # some blanks were noised
    assert 0 < np.array(mask).mean() < 1


def test_the_recipe_learns_with_and_without_self_conditioning():
    """A few AdamW steps on one batch must lower the loss, through the same `loss_fn` the trainer
    uses; with self-conditioning (one earlier pass, a chain of three, or a rollout of two) the graded
    pass's own self-conditioning weights get a gradient too."""
    batch = make_batch(np.random.default_rng(2), small_pool(), 8, {"easy": 1.0})
    temps = mx.full((8,), 0.6)
    rollout_of_two = (draw_rollout(np.random.default_rng(3), 2, 8),)
    for sc_passes, rollout in ((0, ()), (1, ()), (3, ()), (2, rollout_of_two)):
        mx.random.seed(0)
        model = Model(ModelConfig.from_dict(model_config(2, 32, 2)))
        optimizer = optim.AdamW(learning_rate=3e-3)
        grad_fn = nn.value_and_grad(model, partial(loss_fn, sc_passes=sc_passes))
        first, grads = grad_fn(model, *batch, temps, *rollout)
        sc_grad = grads["model"]["decoder"]["self_conditioning"]["gate_proj"]["weight"]
        assert (float(mx.abs(sc_grad).max()) > 0) == (sc_passes > 0)
        for _ in range(15):
            loss, grads = grad_fn(model, *batch, temps, *rollout)
            optimizer.update(model, grads)
            mx.eval(model.parameters(), optimizer.state)
        last, _ = grad_fn(model, *batch, temps, *rollout)
        assert float(last) < 0.8 * float(first), (sc_passes, float(first), float(last))


def test_a_self_conditioning_chain_feeds_each_pass_the_one_before():
    """sc_passes=k grades the (k+1)-th pass of a chain: the same logits as running the chain by hand."""
    model = Model(ModelConfig.from_dict(model_config(2, 32, 2)))
    batch = make_batch(np.random.default_rng(3), small_pool(), 4, {"easy": 1.0})
    prompts, canvases, targets, mask = batch
    temps = mx.array([0.5, 0.7, 0.9, 1.1])
    cache = model.make_cache(4)
    model.encode(prompts, cache)
    sc, losses = None, []
    for _ in range(3):
        logits = model.decode(canvases, cache, sc)
        ce = nn.losses.cross_entropy(logits, targets, reduction="none")
        losses.append(float((ce * mask).sum() / mask.sum()))
        sc = logits / temps[:, None, None]
    got = [float(loss_fn(model, *batch, temps, sc_passes=k)) for k in range(3)]
    np.testing.assert_allclose(got, losses, rtol=1e-5)
    assert len(set(np.round(got, 6))) == 3  # each pass of the chain differs from the one before


def test_the_sampler_canvas_keeps_the_surest_samples_and_renoises_the_rest():
    """Like the sampler: givens stay, the lowest-entropy `fraction` of a row's blanks take the pass's
    sample (here forced by the Gumbel noise), every other blank takes the fresh noise."""
    rng = np.random.default_rng(4)
    B, L, V = 3, T.CANVAS_LENGTH, T.VOCAB_SIZE
    z = mx.array((rng.normal(size=(B, L, V)) * rng.uniform(0.1, 8, (B, L, 1))).astype(np.float32))
    canvases = mx.array(rng.integers(0, V, (B, L)).astype(np.int32))
    blank = mx.array(rng.random((B, L)) < 0.6)
    forced = rng.integers(0, V, (B, L))
    gumbel = mx.array(np.where(np.arange(V) == forced[..., None], 1e4, 0.0).astype(np.float32))
    noise = mx.array(((forced + 1) % V).astype(np.int32))  # never the sample: each blank cell tells which
    out = np.array(sampler_canvas(z, canvases, blank, gumbel, noise, mx.array([0.0, 0.5, 1.0])))
    blank_np = np.array(blank)
    ent = np.array(entropy(log_probs(z)))
    assert (out[~blank_np] == np.array(canvases)[~blank_np]).all()
    for row, fraction in enumerate((0.0, 0.5, 1.0)):
        cells = np.flatnonzero(blank_np[row])
        kept = np.sort(cells[np.argsort(ent[row, cells])][: int(fraction * len(cells))])
        renoised = np.setdiff1d(cells, kept)
        assert (out[row, kept] == forced[row, kept]).all()
        assert (out[row, renoised] == np.array(noise)[row, renoised]).all()


def test_a_rollout_grades_the_pass_after_the_sampler_rewrote_the_canvas():
    """With `rollout`, each earlier pass hands the next the canvas `sampler_canvas` builds from it."""
    model = Model(ModelConfig.from_dict(model_config(2, 32, 2)))
    batch = make_batch(np.random.default_rng(6), small_pool(), 4, {"easy": 1.0})
    prompts, canvases, targets, mask = batch
    temps = mx.array([0.5, 0.7, 0.9, 1.1])
    rollout = draw_rollout(np.random.default_rng(7), 2, 4)
    cache = model.make_cache(4)
    model.encode(prompts, cache)
    x, sc = canvases, None
    for i in range(2):
        z = model.decode(x, cache, sc) / temps[:, None, None]
        x = sampler_canvas(z, x, mask > 0, *(a[i] for a in rollout))
        sc = z
    ce = nn.losses.cross_entropy(model.decode(x, cache, sc), targets, reduction="none")
    by_hand = float((ce * mask).sum() / mask.sum())
    got = float(loss_fn(model, *batch, temps, rollout, sc_passes=2))
    np.testing.assert_allclose(got, by_hand, rtol=1e-5)
    assert not np.allclose(got, float(loss_fn(model, *batch, temps, sc_passes=2)))  # it did rewrite


def test_train_command_writes_a_loadable_checkpoint_and_warm_starts_from_it(tmp_path, capsys, monkeypatch):
    pool, out, more = tmp_path / "pool", tmp_path / "run", tmp_path / "run2"
    train.main(["--make-pool", str(pool), "--pool-sizes", "2", "2", "1"])
    assert sorted(f.name for f in pool.iterdir()) == [
        "pool_easy_1001.jsonl",
        "pool_hard_1003.jsonl",
        "pool_medium_1002.jsonl",
    ]
    common = ["--pool", str(pool), "--batch", "4", "--eval-every", "2", "--eval-count", "1"]
    train.main([*common, "--out", str(out), "--steps", "2", *TINY])
    printed = capsys.readouterr().out
    assert "pool 2 easy, 2 medium, 1 hard;" in printed and "pool_sizes" not in printed  # what is used only
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [row["step"] for row in curve] == [2]
    assert {"easy_solved", "medium_solved", "easy_passes", "loss"} <= set(curve[0])
    model, tokenizer = load(out)
    assert len(model.layers) == 2 and model.vocab_size == T.VOCAB_SIZE
    text = json.loads((out / "config.json").read_text())["text_config"]
    assert (text["num_attention_heads"], text["num_key_value_heads"]) == (2, 1)  # --heads, KV shared in pairs
    assert tokenizer is not None

    with pytest.raises(SystemExit):  # a warm start keeps its geometry: resizing it is an error
        train.main([*common, "--out", str(more), "--steps", "1", "--init", str(out), "--layers", "3"])
    assert "keeps its checkpoint's geometry" in capsys.readouterr().err
    train.main([*common, "--out", str(more), "--steps", "1", "--init", str(out)])
    assert json.loads((more / "config.json").read_text()) == json.loads((out / "config.json").read_text())

    with pytest.raises(SystemExit):
        train.main([*common, "--out", str(more), "--steps", "1", "--grow-layers", "1"])
    assert "--grow-layers deepens the --init checkpoint" in capsys.readouterr().err
    train.main([*common, "--out", str(more), "--steps", "1", "--init", str(out), "--grow-layers", "1"])
    assert len(load(more)[0].layers) == 3
    only_full = tmp_path / "full"  # one full-attention layer: nothing for new sliding layers to follow
    train.main([*common, "--out", str(only_full), "--steps", "1", *TINY[2:], "--layers", "1"])
    with pytest.raises(SystemExit):
        train.main([*common, "--out", str(more), "--init", str(only_full), "--grow-layers", "1"])
    assert "has no sliding-attention layer for new layers to follow" in capsys.readouterr().err

    drawn = []  # (passes, batch) of each rollout the trainer drew
    draw = train.draw_rollout
    monkeypatch.setattr(train, "draw_rollout", lambda rng, n, b: drawn.append((n, b)) or draw(rng, n, b))
    chain = ["--sc-chain", "3", "--sc-temp", "0.9", "1.1", "--seed", "7", "--rollout"]
    train.main([*common, "--out", str(more), "--steps", "6", "--init", str(out), *chain])
    assert len(load(more)[0].layers) == 2
    assert 0 < len(drawn) < 6 and all(1 <= n <= 3 and b == 4 for n, b in drawn), drawn  # only SC batches
    with pytest.raises(SystemExit):
        train.main([*common, "--out", str(more), "--sc-temp", "1.2", "0.8"])
    assert "--sc-temp LO HI needs 0 < LO <= HI" in capsys.readouterr().err


def test_model_sizes_must_be_positive(capsys):
    """`--layers 0` used to fall back silently to the shipped size; now it is a usage error."""
    with pytest.raises(SystemExit):
        train.main(["--pool", "p", "--out", "o", "--layers", "0"])
    assert "must be a positive integer, got 0" in capsys.readouterr().err
    assert model_config(layers=6)["text_config"]["num_hidden_layers"] == 6
    assert model_config()["text_config"]["hidden_size"] == 128
    eight = model_config(heads=8)["text_config"]
    assert (eight["num_attention_heads"], eight["num_key_value_heads"], eight["head_dim"]) == (8, 4, 32)
    with pytest.raises(SystemExit):  # KV heads are shared in pairs: an odd count has no geometry
        train.main(["--pool", "p", "--out", "o", "--heads", "3"])
    assert "--heads: needs an even number of heads (query heads share KV heads in pairs), got 3" in (
        capsys.readouterr().err
    )
    with pytest.raises(ValueError, match="even number of heads"):
        model_config(heads=5)


@pytest.mark.parametrize("extra", [2, 4])
def test_a_grown_model_starts_as_exactly_its_checkpoint_and_can_learn(extra):
    """`--grow-layers`: the deepened shipped model gives the same logits (encoder cache, first pass and
    self-conditioned pass) as the shipped one, keeps full attention last, and its new layers are not
    dead: their zero gains get a gradient from the training loss. 4 new layers > 3 sliding ones also
    exercises placing two after one layer."""
    original, _ = load(ASSETS)
    grown, config = grow(ASSETS, extra)
    types = config["text_config"]["layer_types"]
    assert len(grown.layers) == config["text_config"]["num_hidden_layers"] == 4 + extra
    assert types[-1] == "full_attention" and types.count("full_attention") == 1

    batch = make_batch(np.random.default_rng(3), small_pool(), 4, {"easy": 1.0, "medium": 1.0})
    prompts, canvases = batch[0], batch[1]
    passes = []
    for model in (original, grown):
        cache = model.make_cache(4)
        model.encode(prompts, cache)
        first = model.decode(canvases, cache)
        passes.append((first, model.decode(canvases, cache, first / 0.6)))
    for a, b in zip(*passes, strict=True):
        assert mx.array_equal(a, b)

    grad_fn = nn.value_and_grad(grown, partial(loss_fn, sc_passes=1))
    _, grads = grad_fn(grown, *batch, mx.full((4,), 0.6))
    silent = [i for i, layer in enumerate(grown.layers) if not mx.any(layer.post_attention_layernorm.weight)]
    assert len(silent) == extra and types[silent[0]] == "sliding_attention"
    for i in silent:
        gains = grads["model"]["decoder"]["layers"][i]
        for norm in ("post_attention_layernorm", "post_feedforward_layernorm"):
            assert float(mx.abs(gains[norm]["weight"]).max()) > 0
