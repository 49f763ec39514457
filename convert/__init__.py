"""HF checkpoint -> MLX conversion, streaming one tensor at a time."""
