"""The model card and the Hub folder."""
