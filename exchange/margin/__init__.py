"""Positions and margin requirements (pure integer arithmetic)."""
