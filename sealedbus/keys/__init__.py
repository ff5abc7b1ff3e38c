"""Key management seen from a client: the KeySource interface, the in-process key service and
(with the ``kds`` extra) the network KDS client."""
