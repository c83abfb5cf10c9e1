"""custody package."""
