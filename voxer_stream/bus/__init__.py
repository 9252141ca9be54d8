"""Live chunks and membership between server processes (issue 7, ARCHITECTURE "bus").

``Bus`` carries bytes on named channels: ``LocalBus`` within one process, ``RedisBus``
between processes and hosts through Redis pub/sub. ``Membership`` keeps the set of live
server processes in Redis with heartbeats, and ``Ring`` hashes a message id onto one of
them: the process that owns the message's live tail (as Voxer's router ring hashed
users onto routers).

Delivery on a bus is at most once and in order per publisher; a subscriber that falls
behind is told (``Subscription.overflowed``) rather than slowing the publisher. What a
listener must not miss is made whole from storage by the pipeline, by sequence number.
"""

from .base import Bus, Subscription, follow_json
from .local import LocalBus
from .redis import Membership, RedisBus
from .ring import Ring

__all__ = ["Bus", "LocalBus", "Membership", "RedisBus", "Ring", "Subscription", "follow_json"]
