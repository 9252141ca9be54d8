"""Baselines the benchmark scenarios compare voxer-stream against, run in the same invocation.

``relay``: chunks kept in memory and written to raw trio TCP sockets, no HTTP and no
storage; the physical floor for a Python + trio relay of the same frames.

``janus``: Janus (Debian's ``janus``, C), its Streaming plugin relaying a talker's Opus RTP
to WebRTC subscribers on loopback: what the WebRTC binding (``rtc-latency``) is measured
against.
"""
