"""The synthetic egocentric world and the embedded tiny pair (its build and pre-training)."""
