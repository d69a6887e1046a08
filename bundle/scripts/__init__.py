"""Command-line entry points: the end-to-end pipeline, packaging, checkpoint averaging, the PACS helpers."""
