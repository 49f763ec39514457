"""Scripts that made the bundled models; run from the repository root, never installed with the package."""
