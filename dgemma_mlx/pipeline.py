"""Pipeline mode: one model split by layers over the ranks of an `mx.distributed` group (`mlx.launch`),
so N machines hold a model none of them could hold alone (docs/ARCHITECTURE.md, "Pipeline mode").

Rank r holds a contiguous slice of the layer stack (`pipeline_plan.layer_split`, rank 0 the first
layers) plus the shared tensors: the embedding (which is also the tied head), the final norm and the
self-conditioning MLP. A forward runs the slices in rank order; the hidden states [B, S, H] go from
rank r to rank r+1 with `mx.distributed.send`/`recv`. At the end of a decoder pass the last rank's
hidden states are passed on to every rank (as mlx-lm's pipelined models share them, but hop by hop
round the ring rather than by `all_gather`, which would move N times the bytes), and every rank
computes the same logits and runs the same engine and sampler with the same seed: the decisions
(canvas, draft, stop rule, self-conditioning) are identical on every rank with nothing else sent, and
the tokens equal a single-process run's. What crosses the wire per pass is [B, L, H] activations:
the [B, L, V] logits and self-conditioning probabilities never do (262,144 x 4 bytes per position
against 2,816 x 2 at the released geometry).

`PipelineModel` is the model as the engine sees it (like `server.frames.FramedModel`): `encode` and
`decode` are the pipelined ones, everything else is the wrapped `Model`'s own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten

from .cache import PromptCache
from .config import FULL, SLIDING
from .distributed import Ranks, init
from .errors import DGemmaError
from .model import Model, TopKProbs
from .pipeline_plan import LONE_PROCESS, layer_split


class PipelineModel:
    """A `Model` whose layers outside `layers` were dropped, run as one stage of a pipeline."""

    def __init__(self, model: Model, group: Any, layers: range):
        self.model = model
        self.group = group
        self.rank, self.size = group.rank(), group.size()
        self.owned = layers
        self.bytes_sent = 0  # activations this rank sent (send + its all_gather share), for `dgemma bench`

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.size - 1

    # -- the wire ------------------------------------------------------------------------------------
    def _receive(self, shape: tuple[int, ...]) -> mx.array:
        return mx.distributed.recv(shape, self.model.dtype, self.rank - 1, group=self.group)

    def _send(self, h: mx.array, dst: int | None = None) -> mx.array:
        if h.dtype != self.model.dtype:  # the receiver allocates the model dtype: a mismatch is a bug
            raise RuntimeError(f"pipeline activations are {h.dtype}, expected {self.model.dtype}")
        self.bytes_sent += h.nbytes
        return mx.distributed.send(h, self.rank + 1 if dst is None else dst, group=self.group)

    def _final_states(self, x: mx.array) -> mx.array:
        """The last stage's hidden states on every rank, passed on round the ring (last -> 0 -> 1 ->
        ... -> N-2: one [B, L, H] block per hop, N-1 hops, where an all_gather would move N(N-1)).

        A rank's own stage is evaluated and sent before it waits for the result: nothing in the graph
        orders a receive after a send, and the next rank needs this stage's output first.
        """
        if self.is_last:
            return self._send(x, 0)  # rank 0 is the last rank's other ring neighbour
        mx.eval(self._send(x))
        source = self.size - 1 if self.is_first else self.rank - 1
        final = mx.distributed.recv(x.shape, self.model.dtype, source, group=self.group)
        return self._send(final) if self.rank + 1 < self.size - 1 else final

    def _first_owned(self, kind: str) -> int | None:
        return next((i for i in self.owned if self.model.text.layer_types[i] == kind), None)

    # -- the two modes, as Model.encode / Model.decode over this rank's layers --------------------------
    def encode(self, ids: mx.array, cache: PromptCache) -> None:
        """Model.encode's causal pass over this rank's layers; evaluated here, so the messages of two
        forwards can never be matched out of order."""
        model, text = self.model, self.model.text
        B, S = ids.shape
        n = cache.offset
        h = model.embed(ids) if self.is_first else self._receive((B, S, text.hidden_size))
        masks = {}
        for t in (SLIDING, FULL):
            idx = self._first_owned(t)
            if idx is not None:
                cached = cache.layers[idx].length
                window = text.sliding_window if t == SLIDING else None
                masks[t] = model._encoder_mask(S, cached, n - cached, window, cache)
        scalars = model.model.encoder.language_model.layers
        last = text.num_hidden_layers - 1
        for i in self.owned:
            layer = model.layers[i]
            if i == last:  # only its keys and values are needed
                keys, values = layer.self_attn.keys_values(layer.input_layernorm(h), n)
                cache.layers[i].attend(keys, values)
                break
            h = layer(h, cache.layers[i], n, masks[text.layer_types[i]], scalars[i].layer_scalar)
        cache.offset = n + S
        mx.eval(cache.state(), *([] if self.is_last else [self._send(h)]))

    def decode(
        self,
        canvas: mx.array,
        cache: Any,
        self_conditioning_logits: mx.array | None = None,
        *,
        self_conditioning_probs: mx.array | TopKProbs | None = None,
    ) -> mx.array:
        """Model.decode over this rank's layers; every rank returns the same float32 logits."""
        B, L = canvas.shape
        if self.is_first:
            probs = self_conditioning_probs
            if probs is None and self_conditioning_logits is not None:
                probs = mx.softmax(self_conditioning_logits.astype(mx.float32), axis=-1)
            x = self.decoder_input(canvas, probs)
        else:
            x = self._receive((B, L, self.model.text.hidden_size))
        return self.head(self._final_states(self.decoder_layers(x, cache)))

    # -- the pieces of a decoder pass (also timed alone by `dgemma bench --pipeline`) -------------------
    def decoder_input(self, canvas: mx.array, probs: mx.array | TopKProbs | None) -> mx.array:
        """Rank 0: the canvas embedded, with the previous pass's self-conditioning (Model's own)."""
        return self.model.decoder_input(canvas, probs)

    def decoder_layers(self, x: mx.array, cache: Any) -> mx.array:
        """This rank's layers, bidirectional over the cache (read only)."""
        text = self.model.text
        L, n = x.shape[1], cache.offset
        masks = {}
        for i in self.owned:
            t = text.layer_types[i]
            if t not in masks:
                cached = cache.layers[i].length
                masks[t] = self._decoder_mask(L, cached, n - cached, cache)
            layer = self.model.layers[i]
            x = layer(x, cache.layers[i].read_only(), n, masks[t], layer.layer_scalar)
        return x

    def head(self, x: mx.array) -> mx.array:
        """Final norm, the tied head, the soft-cap: float32 logits (Model's own; run on every rank)."""
        return self.model.head(x)

    def _decoder_mask(self, *args: Any) -> Any:
        # Looked up on the instance first, so server.frames.FramedModel's per-call override applies.
        return self.model._decoder_mask(*args)

    def parameter_count(self) -> int:
        """Parameters this rank holds (quantized weights count their packed elements)."""
        return sum(v.size for _, v in tree_flatten(self.model.parameters()))


def drop_layers(model: Model, keep: range) -> None:
    """Forget the layers outside `keep` (as mlx-lm's `pipeline` does): their lazily mapped weights are
    never evaluated, so never read from disk. Layer numbers stay as they were."""
    layers = model.model.decoder.layers
    for i in range(len(layers)):
        if i not in keep:
            layers[i] = None


def pipeline_ranks() -> Ranks:
    """The `mlx.launch` group (distributed.init); a lone process is one line, not a single-rank run."""
    ranks = init()
    if not ranks.distributed:
        raise DGemmaError(LONE_PROCESS)
    return ranks


def start_pipeline(
    path_or_repo: str | Path, settings: str, force: bool = False, dtype: str | None = None
) -> tuple[PipelineModel, Any, Ranks]:
    """Join the group, agree, load this rank's stage: (model, tokenizer, ranks).

    Before any weight is read, every rank resolves the model, checks that its share fits, and
    compares the checkpoint and `settings` with rank 0's (`distributed.handshake`): a rank with other
    files, other options or too little memory makes every rank stop with one line, not a hang.
    """
    from .distributed import checkpoint_fingerprint, handshake, stop_on_sigterm
    from .loading import resolve_model_path
    from .memory import CONTEXT_FOR_ESTIMATE
    from .pipeline_plan import check_share_fits, model_shares

    ranks = pipeline_ranks()
    error, fingerprint, model_dir = None, b"", None
    try:
        model_dir = resolve_model_path(path_or_repo)
        fingerprint = checkpoint_fingerprint(model_dir)
        share = model_shares(model_dir, ranks.size, CONTEXT_FOR_ESTIMATE)[ranks.rank]
        check_share_fits(model_dir, share, ranks.size, force=force)
    except DGemmaError as e:
        error = e
    handshake(ranks, {"model files": fingerprint, "settings": settings}, error)
    stop_on_sigterm(ranks)
    model, tokenizer = load_pipeline(model_dir, ranks, dtype=dtype)
    return model, tokenizer, ranks


def load_pipeline(
    path_or_repo: str | Path, ranks: Ranks, dtype: str | None = None, force: bool = True
) -> tuple[PipelineModel, Any]:
    """Load only this rank's stage: (PipelineModel, tokenizer). Unless `force` (start_pipeline has
    already checked), the memory guard checks this rank's share (`pipeline_plan`), not the whole model."""
    from . import memory
    from .loading import load_model, resolve_model_path
    from .pipeline_plan import check_share_fits, model_shares
    from .tokenizer import has_tokenizer, load_tokenizer

    group = ranks.group
    model_dir = resolve_model_path(path_or_repo)
    if not force:
        share = model_shares(model_dir, ranks.size, memory.CONTEXT_FOR_ESTIMATE)[ranks.rank]
        check_share_fits(model_dir, share, ranks.size)
    model, model_dir = load_model(model_dir, dtype=dtype, lazy=True)
    layers = layer_split(model.text.num_hidden_layers, ranks.size)[ranks.rank]
    drop_layers(model, layers)
    mx.eval(model.parameters())
    model.model_dir = model_dir
    tokenizer = load_tokenizer(model_dir) if has_tokenizer(model_dir) else None
    mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group))  # every rank loaded: start together
    return PipelineModel(model, group, layers), tokenizer
