"""The pure core: wire format, key schedule, sealing and opening, signatures, replay windows.

No sockets, no clock reads, no randomness that is not handed in; imports only ``cryptography``
and ``msgpack`` (and the shared error types).
"""
