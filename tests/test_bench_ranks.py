"""`dgemma bench` under `mlx.launch -n 2 --backend ring` on 127.0.0.1, data-parallel (#26): every prompt
is generated once, dealt over both ranks, and rank 0 reports rows/s per rank and the exchange share.

The launch runs with a subprocess timeout and on its own ports (see test_distributed_batch.py)."""

import json
import subprocess

from test_distributed_batch import DGEMMA, launch_cmd, rank_exit_codes
from typer.testing import CliRunner

from dgemma_mlx.cli.app import app

ARGS = ["bench", "-g", "tiny", "-p", "8", "--rows", "6", "-b", "2", "--passes", "2", "--json"]


def test_two_ranks_share_the_prompts_and_report_rates_and_exchange_share():
    done = subprocess.run(launch_cmd(DGEMMA, *ARGS), capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert not rank_exit_codes(output), output
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["setup"]["ranks"] == 2 and report["setup"]["mode"] == "data-parallel"
    row = report["rows"][0]
    assert row["rows"] == 6
    ranks = row["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert sum(r["rows"] for r in ranks) == 6
    assert all(r["rows"] > 0 and r["rows_per_s"] > 0 for r in ranks)  # batches of 2 dealt 2 + 1
    assert all(0.0 <= r["exchange_share"] <= 1.0 for r in ranks)
    assert 0.0 <= row["exchange_share"] <= 1.0


def test_one_process_with_rows_is_the_same_measurement_on_one_rank():
    result = CliRunner().invoke(app, ARGS)
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["rows"][0]
    assert row["rows"] == 6 and [r["rows"] for r in row["ranks"]] == [6]
    assert row["exchange_share"] < 0.01  # a group of one exchanges with nobody: its ticks cost ~nothing


def test_options_the_data_parallel_run_cannot_take_are_one_line():
    result = CliRunner().invoke(app, ["bench", "-g", "tiny", "--rows", "4", "-p", "8,16"])
    assert result.exit_code == 1
    assert "one --prompt length" in result.stderr
