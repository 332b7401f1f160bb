"""Load tests: the benchmark against the in-process limit and a naive FastAPI server."""
