"""strongroom package."""
