"""datasets namespace."""
