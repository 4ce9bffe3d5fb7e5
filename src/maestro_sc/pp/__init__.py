"""pp namespace."""
