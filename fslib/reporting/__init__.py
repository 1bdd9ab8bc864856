"""Figures, the HTML site, run comparison, README blocks, the browser check."""
