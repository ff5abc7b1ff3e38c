"""End-to-end throughput benchmark: plaintext against sealed (per-message and batch signatures)
on the in-memory bus, RabbitMQ (pika) and Kafka (kafka-python).

- ``endpoints``: the producing and consuming loops of each transport and mode, and the worker
  process that runs them;
- ``runner``: rounds, alternation, statistics, the progress bar and the command line;
- ``report``: JSON, Markdown and PNG output.

Run it with ``.venv/bin/python benchmarks/run.py`` (``--quick`` for a smoke run) or
``sealedbus bench``; see ``benchmarks/README.md``.
"""
