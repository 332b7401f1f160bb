"""Helpers the test folders share: architectures, references, servers, load and crafted files."""
