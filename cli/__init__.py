"""The `dgemma` command line: thin Typer commands over the dgemma_mlx Python API."""
