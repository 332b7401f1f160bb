"""model-serve: serve PyTorch state_dict checkpoints over HTTP."""

__version__ = "0.1.0"
