"""Our own compiler passes, one per module."""
