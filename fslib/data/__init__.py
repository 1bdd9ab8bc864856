"""Datasets on disk, user formats, sources and summaries."""
