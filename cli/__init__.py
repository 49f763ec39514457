"""The `dgemma` command line: thin Typer commands over the dgemma_mlx Python API."""

import os

# transformers (loaded by the tokenizer) logs config warnings meant for its own model classes; a CLI user
# cannot act on them. Set before anything imports transformers.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
