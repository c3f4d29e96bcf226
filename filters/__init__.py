"""Length, token-budget, visual-quality, dedup and text filters."""
