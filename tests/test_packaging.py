"""The wheel ships the library, the CLI, conversion and the bundled Sudoku model, and no training code."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_the_package_and_no_training_code(tmp_path):
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(tmp_path), "."], cwd=ROOT, check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("dgemma_mlx-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "dgemma_mlx/sudoku/assets/model.safetensors",
        "dgemma_mlx/sudoku/assets/config.json",
        "dgemma_mlx/sudoku/architecture.py",
        "dgemma_mlx/sudoku/solver_model.py",
        "dgemma_mlx/sudoku/evaluation.py",
        "dgemma_mlx/api.py",
        "dgemma_mlx/cli/__init__.py",
        "dgemma_mlx/cli/app.py",
        "dgemma_mlx/cli/sudoku.py",
        "dgemma_mlx/convert/__init__.py",
    ):
        assert required in names, required
    assert not [n for n in names if n.startswith("training/") or "/training/" in n]
    assert not [n for n in names if Path(n).stem == "train" or n.endswith("TRAINING.md")]
