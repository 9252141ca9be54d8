"""voxer-stream: store-and-stream voice server."""

__version__ = "0.1.0"
