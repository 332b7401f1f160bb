"""Architectures served by model-serve's demo and tests; imports only torch, never service/."""
