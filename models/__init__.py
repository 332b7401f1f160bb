"""Architectures for model-serve (one module per family) plus the two demo models.

Architecture modules import only torch; ``demo`` is plain constants; ``demo_data`` and
``demo_training`` add numpy, Pillow and scikit-learn. Nothing here imports ``service``.
"""
