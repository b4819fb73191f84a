"""The SDK's version, sent to the broker when a worker registers."""

__version__ = "0.1.0"
