"""The taskbroker command line."""
