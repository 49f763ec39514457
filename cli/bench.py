"""`dgemma bench`: prefill, pass time (forward and outside it), passes, tokens/s and memory, as a table or
JSON, optionally against mlx-lm's autoregressive decoding at the same geometry.

Registered in `cli/app.py`. Every option is checked by `dgemma_mlx.geometry` (plain Python) before MLX
and the model stack are imported, so a typo answers at once; the measuring is `dgemma_mlx.bench`.
"""

from __future__ import annotations

import json
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.geometry import (
    FLOAT_DTYPES,
    GEOMETRIES,
    PRECISIONS,
    QUANT_NAMES,
    STORED,
    SUDOKU,
    check_layers,
    geometry,
    parse_counts,
    parse_names,
    parse_precision,
)
from dgemma_mlx.quant_choices import BITS, DEFAULT_RECIPE, GROUP_SIZES, RECIPES

from .bench_ranks import bench_across_ranks, data_parallel
from .options import force_option, resolve_model, say, stderr, stdout, user_errors

if TYPE_CHECKING:
    from dgemma_mlx.bench import BenchReport, BenchSpec

RANDOM_DEFAULT = "4bit"
JSON_KEYS_HELP = (
    "--json prints one object: setup {geometry, weights, layers, hidden_size, vocab_size, experts, "
    "canvas_length, parameters_total, parameters_active, device, mlx_version, max_denoising_steps, repeats, "
    "statistic, ar_tokens, seed, fast} and rows [{precision, sampler, dtype, prompt_tokens, canvases, "
    "weights_gb, "
    "prefill_tok_s, pass_ms, forward_ms, outside_ms, outside_pct, passes_per_canvas, tokens_per_forward, "
    "ttfc_ms, tok_s, peak_memory_gb, ar_prefill_tok_s, ar_ms_per_token, ar_peak_memory_gb, "
    "break_even_tokens_per_pass}] (ar_* and break_even null without --ar; fast null without --fast/--knobs, "
    "else its label and knobs; sampler is exact, or the preset's name / knobs on the fast rows)."
)


def bench_command(
    geometry_name: str | None = typer.Option(
        None,
        "--geometry",
        "-g",
        help="Random weights at a named geometry: "
        + "; ".join(f"{g.name}: {g.about}" for g in GEOMETRIES.values())
        + " \\[default: mid].",
        show_default=False,
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="A checkpoint instead: directory, name in `dgemma models`, or repo id."
    ),
    layers: int | None = typer.Option(
        None, "--layers", help="Cut a random geometry to its first N layers (26b-a4b has 30)."
    ),
    prompt: str = typer.Option("128", "--prompt", "-p", help="Prompt lengths in tokens, comma-separated."),
    canvases: str = typer.Option("1", "--canvases", "-c", help="Canvases per generation, comma-separated."),
    precision: str | None = typer.Option(
        None,
        "--precision",
        help=f"Comma-separated: {', '.join(PRECISIONS)} \\[default: {RANDOM_DEFAULT} for random weights, "
        "stored for a checkpoint].",
        show_default=False,
    ),
    bits: int | None = typer.Option(None, "--bits", help="Same as --precision NBITbit, e.g. --bits 4."),
    recipe: str = typer.Option(DEFAULT_RECIPE, "--recipe", help=f"Recipe: {', '.join(RECIPES)}."),
    group_size: int = typer.Option(64, "--group-size", help="Weights sharing one scale (affine modes)."),
    dtype: str | None = typer.Option(
        None,
        "--dtype",
        help="Activations of a quantized precision: float32, bfloat16, float16 \\[default: bfloat16 on a "
        "GPU; float32 on the CPU, where MLX's bfloat16 quantized kernels are ~10x slower].",
        show_default=False,
    ),
    passes: int | None = typer.Option(
        None,
        "--passes",
        help="Most passes per canvas \\[default: 8 for random weights, which never converge; the "
        "checkpoint's own, with adaptive stopping].",
        show_default=False,
    ),
    repeats: int = typer.Option(3, "--repeats", "-r", help="Timed runs per grid point, after one warm-up."),
    best: bool = typer.Option(False, "--best", help="Report the best repeat instead of the median."),
    ar: bool = typer.Option(False, "--ar", help="Also decode with mlx-lm's gemma4_text (same weights)."),
    ar_tokens: int = typer.Option(32, "--ar-tokens", help="Tokens each autoregressive run decodes."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights, prompts and sampler."),
    fast: str | None = typer.Option(
        None,
        "--fast",
        metavar="PRESET",
        help="Also run every grid point with this fast-decoding preset, interleaved with the exact sampler "
        "(a row each).",
    ),
    knobs: str | None = typer.Option(
        None,
        "--knobs",
        help="Fast-decoding knobs as key=value pairs (e.g. 'max_passes=16 self_conditioning_top_k=8'), "
        "on top of --fast or alone.",
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout (keys below)."),
    force: bool = force_option(),
    pipeline: bool = typer.Option(False, "--pipeline", help="Under mlx.launch: a pass split over the ranks."),
    rows: int | None = typer.Option(None, "--rows", help="Data-parallel run: prompts \\[default: 16]."),
    batch_size: int = typer.Option(4, "--batch-size", "-b", help="Data-parallel: rows per batch."),
) -> None:
    """Benchmark DiffusionGemma here (the full help is HELP, set below)."""
    with user_errors():
        if pipeline or data_parallel(locals()):
            return bench_across_ranks(locals(), _spec, stdout)
        spec = _spec(locals())
        with Progress(stderr, spec.steps()) as progress:
            from dgemma_mlx.bench import run_bench

            report = run_bench(spec, progress.advance)
        if as_json:
            print(json.dumps(report.to_dict()), flush=True)
        else:
            print_report(report, stdout)


HELP = (
    "Benchmark DiffusionGemma here: prefill, ms per pass (forward and outside it), passes per canvas, "
    "tokens per forward, time to first canvas, tok/s, peak memory; with --ar, mlx-lm's ms/token at the "
    "same geometry and the break-even tokens per pass (pass ms / AR ms per token).",
    "Every grid point (prompt lengths x canvases x precisions) runs the real engine, EOS off, one warm-up "
    "then --repeats timed runs; a progress bar runs on stderr. Random weights never converge: passes per "
    "canvas and tokens per forward mean something only on a checkpoint.",
    JSON_KEYS_HELP,
    "Under mlx.launch without --pipeline (or alone with --rows): data-parallel generation, as `dgemma "
    "batch` deals it: --rows seeded prompts in batches of --batch-size dealt over the ranks, one warm-up, "
    "then rows/s overall and per rank and each rank's exchange share (one precision, prompt length and "
    "canvas count; --repeats does not apply). --json: setup {mode, geometry, precision, layers, "
    "canvas_length, max_denoising_steps, ranks, prompts, batch_size, device, seed} and rows [{prompt_tokens, "
    "canvases, rows, wall_s, rows_per_s, tok_s, exchange_share, ranks [{rank, rows, rows_per_s, tok_s, "
    "busy_s, exchange_share}]}].",
)
bench_command.__doc__ = "\n\n".join(HELP)


def _check_choice(value: int, allowed: tuple[int, ...], option: str) -> None:
    if value not in allowed:
        raise DGemmaError(f"{option} must be one of {', '.join(map(str, allowed))}, got {value}")


def _spec(o: dict[str, Any]) -> BenchSpec:
    """The options as a BenchSpec, every one checked before anything heavy is imported: a bad value is
    one line and exit 1, as the shared generation flags are (`options.with_generation_flags`)."""
    if o["model"] is not None and (o["geometry_name"] is not None or o["layers"] is not None):
        raise DGemmaError("--model runs a checkpoint, whole: drop --geometry and --layers")
    name = o["geometry_name"] or "mid"
    geometry(name)
    check_layers(name, o["layers"])
    random_weights = o["model"] is None and name != SUDOKU
    if o["bits"] is not None:
        if o["precision"] is not None:
            raise DGemmaError("--bits is short for --precision NBITbit: give one of them")
        _check_choice(o["bits"], BITS, "--bits")
    _check_choice(o["group_size"], GROUP_SIZES, "--group-size")
    for option, minimum in (("passes", 2), ("repeats", 1), ("ar_tokens", 2)):
        if o[option] is not None and o[option] < minimum:
            flag = "--" + option.replace("_", "-")
            raise DGemmaError(f"{flag} must be {minimum} or more, got {o[option]}")
    if o["dtype"] is not None and o["dtype"] not in FLOAT_DTYPES:
        raise DGemmaError(f"unknown dtype {o['dtype']!r} (choose from {', '.join(FLOAT_DTYPES)})")
    default = RANDOM_DEFAULT if random_weights else STORED
    names = parse_names(f"{o['bits']}bit" if o["bits"] is not None else o["precision"] or default)
    if random_weights and STORED in names:
        raise DGemmaError("--precision stored is for a checkpoint; random weights need float32, 4bit, ...")
    lengths = parse_counts(o["prompt"], "--prompt")
    counts = parse_counts(o["canvases"], "--canvases")
    chosen = resolve_model(o["model"]) if o["model"] is not None else None
    precisions = tuple(
        parse_precision(n, o["dtype"] or _default_dtype(n), o["recipe"], o["group_size"]) for n in names
    )
    chosen_knobs = _knobs(o["fast"], o["knobs"])
    from dgemma_mlx.bench import BenchSpec  # MLX, mlx-lm and the model stack: only past the checks

    return BenchSpec(
        geometry=name, model=chosen, layers=o["layers"], prompt_lengths=lengths, canvases=counts,
        precisions=precisions, passes=o["passes"], repeats=o["repeats"], best=o["best"], ar=o["ar"],
        ar_tokens=o["ar_tokens"], seed=o["seed"], force=o["force"], fast=tuple(chosen_knobs.items()),
        fast_label=o["fast"] or "knobs",
    )  # fmt: skip


def _knobs(preset: str | None, text: str | None) -> dict[str, Any]:
    """--fast and --knobs as fast-decoding overrides, checked (plain Python: no MLX)."""
    from dgemma_mlx.fast_presets import FAST_FIELDS, FAST_KEY, expand
    from dgemma_mlx.generation_config import check_fields, parse_overrides

    given = parse_overrides(text) if text else {}
    if other := sorted(set(given) - set(FAST_FIELDS)):
        raise DGemmaError(f"--knobs takes fast-decoding knobs ({', '.join(FAST_FIELDS)}), not {other[0]}")
    chosen = expand({FAST_KEY: preset, **given}) if preset is not None else given
    chosen = {k: v for k, v in chosen.items() if v is not None}
    check_fields(**chosen)
    return chosen


def _default_dtype(name: str) -> str:
    """Quantized precisions compute in bfloat16 as real checkpoints do, except on the CPU (see --dtype)."""
    if name not in QUANT_NAMES:
        return "float32"  # unused: a float precision is its own dtype, `stored` keeps the checkpoint's
    import mlx.core as mx

    return "bfloat16" if mx.default_device().type == mx.gpu else "float32"


class Progress:
    """A Rich bar on a terminal; off one, a plain line every `LOG_EVERY` seconds (stderr either way)."""

    LOG_EVERY = 10.0

    def __init__(self, console: Console, total: int):
        self.console, self.total, self.done = console, total, 0
        self.last_log = time.perf_counter()
        self.bar = None
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            columns = (TextColumn("bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            self.bar = Bar(*columns, TextColumn("{task.description}"), console=console, transient=True)
            self.task = self.bar.add_task("building the model", total=total)

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.bar is not None:
            self.bar.__exit__(kind, exc, tb)

    def advance(self, description: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=description)
        elif time.perf_counter() - self.last_log >= self.LOG_EVERY:
            self.last_log = time.perf_counter()
            say(self.console, f"bench {self.done}/{self.total}: {description}", style="dim")


COLUMNS = (
    ("precision", "precision", ""),
    ("sampler", "sampler", ""),
    ("prompt_tokens", "prompt", "d"),
    ("canvases", "canvases", "d"),
    ("weights_gb", "weights GB", ".2f"),
    ("prefill_tok_s", "prefill tok/s", ".0f"),
    ("pass_ms", "pass ms", ".1f"),
    ("forward_ms", "forward ms", ".1f"),
    ("outside_ms", "outside ms", ".1f"),
    ("outside_pct", "outside %", ".1f"),
    ("passes_per_canvas", "passes/canvas", ".1f"),
    ("tokens_per_forward", "tok/forward", ".2f"),
    ("ttfc_ms", "first canvas ms", ".0f"),
    ("tok_s", "tok/s", ".1f"),
    ("peak_memory_gb", "peak GB", ".2f"),
)
AR_COLUMNS = (
    ("ar_ms_per_token", "AR ms/tok", ".2f"),
    ("break_even_tokens_per_pass", "break-even tok/pass", ".1f"),
)


def title(setup: dict[str, Any]) -> str:
    """One line: what was measured, on what, aggregated how."""
    from dgemma_mlx.units import fmt_count

    weights = "random weights" if setup["weights"] == "random" else "checkpoint"
    return (
        f"{setup['geometry']} ({weights}): {setup['layers']} layers, hidden {setup['hidden_size']}, vocab "
        f"{setup['vocab_size']}, experts {setup['experts']}, {fmt_count(setup['parameters_total'])} "
        f"parameters ({fmt_count(setup['parameters_active'])} active), canvas {setup['canvas_length']}; "
        f"{setup['device']}, mlx {setup['mlx_version']}; {setup['statistic']} of {setup['repeats']}, "
        f"at most {setup['max_denoising_steps']} passes per canvas"
        + (f", AR {setup['ar_tokens']} tokens" if setup["ar_tokens"] else "")
    )


def print_report(report: BenchReport, console: Console) -> None:
    """A title line, then the rows as a Rich table, never squeezed or wrapped when piped."""
    with_ar = any(row["ar_ms_per_token"] is not None for row in report.rows)
    say(console, title(report.setup))
    table = Table()
    columns = COLUMNS + (AR_COLUMNS if with_ar else ())
    for key, header, _ in columns:
        table.add_column(header, justify="left" if key == "precision" else "right", no_wrap=True)
    for row in report.rows:
        table.add_row(*(format(row[key], spec) if row[key] is not None else "–" for key, _, spec in columns))
    if not console.is_terminal:  # piped: as wide as the table needs (Rich would squeeze it to 80)
        width = Measurement.get(console, console.options.update_width(10_000), table).maximum
        console = Console(width=max(80, width), highlight=False)
    console.print(table)
