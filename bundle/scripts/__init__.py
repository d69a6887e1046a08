"""Command-line entry points that chain bundle configs: the end-to-end pipeline and packaging."""
