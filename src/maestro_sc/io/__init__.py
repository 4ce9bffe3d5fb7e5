"""io namespace."""
