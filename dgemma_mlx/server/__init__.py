"""`dgemma serve`: an OpenAI-compatible server that batches concurrent requests into shared canvases.

Kept out of the CLI's start-up path: `cli/serve.py` imports these modules only when the command runs.
See docs/ARCHITECTURE.md, "The server".
"""
