"""Interoperability with the real third-party client: Python confluent-kafka.

Proves that what paystream puts on the wire is standard Confluent Avro (magic byte 0, 4-byte
big-endian schema id, Avro binary), that our schema registry serves it to Confluent's
SchemaRegistryClient, and that our tooling decodes what Confluent's AvroSerializer writes.
Runs against the local stack (`make up`); endpoints come from the same env vars as the stack.
"""

import json
import os
import struct
import subprocess
import time
import urllib.request
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

BROKER = os.environ.get("PAYSTREAM_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")
REGISTRY = os.environ.get("PAYSTREAM_SCHEMA_REGISTRY__URL", "http://127.0.0.1:8081")
GATEWAY = "http://" + os.environ.get("PAYSTREAM_GATEWAY_ADDR", "127.0.0.1:8080")
BIN_DIR = os.environ.get("PAYSTREAM_BIN_DIR", os.path.expanduser("~/.cache/paystream/target/debug"))
REQUESTED_TOPIC = "payments.requested.v1"
SCHEMAS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "schemas")


def post_payment(body, key):
    request = urllib.request.Request(
        f"{GATEWAY}/v1/payments",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Idempotency-Key": key},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
        return json.load(response)


def consume_key(topic, key, timeout=30.0):
    """The first committed record of `topic` whose key is `key`."""
    consumer = Consumer({
        "bootstrap.servers": BROKER,
        "group.id": f"pytest-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            if message.key() == key.encode():
                return message
        raise AssertionError(f"no record with key {key} on {topic} within {timeout}s")
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def registry():
    return SchemaRegistryClient({"url": REGISTRY})


def test_confluent_deserializer_reads_gateway_events(registry):
    body = {"merchant_id": "m_py", "amount_minor": 1234, "currency": "CHF",
            "customer_id": "c_py", "payment_method": "card"}
    accepted = post_payment(body, f"py-{uuid.uuid4()}")
    payment_id = accepted["id"]

    message = consume_key(REQUESTED_TOPIC, payment_id)
    raw = message.value()
    magic, schema_id = struct.unpack(">bI", raw[:5])
    assert magic == 0
    latest = registry.get_latest_version(f"{REQUESTED_TOPIC}-value")
    assert schema_id == latest.schema_id

    deserializer = AvroDeserializer(registry)
    event = deserializer(raw, SerializationContext(REQUESTED_TOPIC, MessageField.VALUE))
    assert event["payment_id"] == payment_id
    assert event["merchant_id"] == "m_py"
    assert event["amount_minor"] == 1234
    assert event["currency"] == "CHF"
    headers = dict(message.headers())
    assert headers["event_id"].decode() == event["event_id"]
    # timestamp-millis is a logical type: Confluent's client hands back a datetime.
    assert event["requested_at"].year >= 2024


def test_paystream_tail_decodes_what_confluent_serializer_writes(registry):
    topic = f"pytest-{uuid.uuid4().hex[:12]}.payments.requested.v1"
    admin = AdminClient({"bootstrap.servers": BROKER})  # must outlive the future
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(15)
    with open(os.path.join(SCHEMAS, "payments.requested.v1.avsc")) as f:
        schema = f.read()
    serializer = AvroSerializer(registry, schema)
    payment_id = str(uuid.uuid4())
    value = {"event_id": str(uuid.uuid4()), "payment_id": payment_id, "client_id": "py",
             "merchant_id": "m_py", "customer_id": "c_py", "amount_minor": 99, "currency": "EUR",
             "payment_method": "card", "requested_at": 1_700_000_000_000}
    producer = Producer({"bootstrap.servers": BROKER, "enable.idempotence": True})
    other = dict(value, payment_id=str(uuid.uuid4()), event_id=str(uuid.uuid4()))
    for v in (other, value):
        producer.produce(topic, key=v["payment_id"],
                         value=serializer(v, SerializationContext(topic, MessageField.VALUE)),
                         headers={"event_id": v["event_id"]})
    assert producer.flush(15) == 0

    out = subprocess.run(
        [os.path.join(BIN_DIR, "paystream"), "tail", topic, "--from-beginning", "--key", payment_id,
         "--max", "1", "--idle-timeout", "20"],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "PAYSTREAM_SCHEMA_REGISTRY__URL": REGISTRY,
             "PAYSTREAM_KAFKA__BOOTSTRAP_SERVERS": BROKER},
    )
    line = json.loads(out.stdout.strip().splitlines()[0])
    assert line["key"] == payment_id
    assert line["headers"]["event_id"] == value["event_id"]
    assert line["value"]["amount_minor"] == 99
    assert line["value"]["payment_id"] == payment_id


def test_tail_rejects_an_unknown_topic():
    result = subprocess.run(
        [os.path.join(BIN_DIR, "paystream"), "tail", f"no-such-topic-{uuid.uuid4().hex}",
         "--idle-timeout", "2"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "does not exist" in result.stderr
