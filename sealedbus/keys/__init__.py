"""Key management seen from a client: the KeySource interface, the in-process key service, the
key-service rules it shares with the KDS (``authority``), and (with the ``kds`` extra) the
network KDS client, with the request-signing protocol (``signing``) and owner-only key files
(``keyfiles``) that the client and the KDS both use."""
