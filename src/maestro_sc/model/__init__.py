"""Plain-torch MAESTRO model (no Lightning, no AnnData)."""
