"""The key distribution service (KDS): HTTP API, data layer, rotation scheduler, audit log and
keys at rest. Needs the ``kds`` extra; importing this package alone imports nothing heavy."""
