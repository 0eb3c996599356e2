"""Orders from a RabbitMQ queue, joined with a Kafka table of customers; results to a NATS JetStream
subject, and spend per customer to the live HTTP view.

Inputs:

* RabbitMQ queue ``orders`` (JSON ``{"order_id", "customer_id", "amount"}``, published with a
  ``message_id``): bridged into the Kafka topic ``rabbitmq-orders-orders-ingest`` keyed by customer id. A
  message is acked to RabbitMQ only once Kafka holds it; a re-delivery after a crash is dropped by its
  ``message_id`` within 10 minutes (``dedupe=``). A message that is not JSON goes to the queue's
  dead-letter exchange, if it has one, else to ``rabbitmq-orders-dlq``.
* Kafka topic ``customers`` (compacted, keyed by customer id): ``{"name", "tier"}``.

Outputs:

* NATS JetStream subject ``orders.enriched.<tier>`` (a stream must capture ``orders.enriched.>``):
  each order with its customer, sent once its checkpoint committed, with a ``Nats-Msg-Id`` that JetStream
  uses to drop a re-delivery;
* store ``spend`` (count and total per customer): ``GET /stores/spend/<customer>`` and the live page of
  ``streamproc run --http-port``.

Servers: ``AMQP_URL`` (default ``amqp://guest:guest@localhost:5672/``) and ``NATS_URL`` (default
``nats://localhost:4222``). The ingest topic gets as many partitions as ``customers``, so the join is
co-partitioned.
"""
import os

from streamproc import Topology, agg, connectors, serdes

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")
NATS_URL = os.environ.get("NATS_URL", "nats://localhost:4222")

topology = Topology("rabbitmq-orders")

orders = topology.stream(
    connectors.RabbitMQ(AMQP_URL, queue="orders", key=lambda o: o["customer_id"], prefetch=1000,
                        dedupe="10m", name="orders"),
    key=serdes.String(), value=serdes.Json(), on_error="dead-letter")
customers = topology.table("customers", key=serdes.String(), value=serdes.Json(), name="customers")

enriched = orders.join(
    customers,
    lambda o, c: {**o, "customer": c and c["name"], "tier": (c and c["tier"]) or "unknown"},
    how="left")
enriched.to(connectors.NatsJetStream(NATS_URL, subject=lambda customer_id, o: f"orders.enriched.{o['tier']}",
                                     name="enriched"),
            key=serdes.String(), value=serdes.Json())

(enriched.group_by_key()
    .aggregate(orders=agg.count(), total=agg.sum("amount"), name="spend"))
