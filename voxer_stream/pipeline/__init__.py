"""The store-and-stream pipeline: ingest, the hub, the catch-up-to-live reader."""

from .hub import Hub, LiveMessage
from .ingest import UploadSession
from .reader import ListenSession
from .sink import FrameSink

__all__ = ["FrameSink", "Hub", "ListenSession", "LiveMessage", "UploadSession"]
