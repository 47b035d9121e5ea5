"""The frontend service: the public API gate."""
