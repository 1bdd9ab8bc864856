"""Models and losses: KD losses, loss paths, collation, model loading, adapters, generation, vision memo."""
