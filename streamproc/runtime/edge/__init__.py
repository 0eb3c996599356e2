"""The edge of an instance (DESIGN section 9): bridges from external sources into ingest topics and
deliveries from egress topics to external sinks, run by one process per instance (``process.py``)
next to the workers, one thread per connector.

* ``bridge.py``: external message -> Kafka record (idempotent producer) -> ack once Kafka confirmed.
* ``delivery.py``: committed egress record -> external system -> Kafka offset committed once the system
  confirmed.
* ``backoff.py``: the retry pacing both use while a system is down.

What the workers add: a task whose egress backlog exceeds its connector's ``buffer`` pauses
(``worker/egress.py``); ``dedupe=`` drops re-deliveries in the source operator (``operators/io.py``).
"""
