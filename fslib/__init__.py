"""FirstSight: distilling Qwen2-VL for egocentric question answering."""
