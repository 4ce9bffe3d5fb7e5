"""Lightning training layer."""
