"""Bottom layer: JSON and atomic folders, params checking against the notebooks, run provenance. No torch."""
