"""Conformance of paystream's schema registry, driven by Confluent's own Python client.

Every call goes through confluent-kafka's SchemaRegistryClient (and its Avro serde), the
way a Python producer, consumer or operator script uses a Confluent Schema Registry; the
tests check the results and the Confluent error codes. Target: PAYSTREAM_SCHEMA_REGISTRY__URL
(the stack's registry by default). Subjects are unique per test, so reruns against a
persistent database pass; the global level is never changed (it is shared).
"""

import json
import os
import uuid

import pytest
from confluent_kafka.schema_registry import (
    ConfigCompatibilityLevel,
    Schema,
    SchemaRegistryClient,
    SchemaRegistryError,
    ServerConfig,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

REGISTRY = os.environ.get("PAYSTREAM_SCHEMA_REGISTRY__URL", "http://127.0.0.1:8081")
SCHEMAS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "schemas")

LEVELS = [
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
]


def record(name, fields, namespace="paystream.pytest"):
    return json.dumps({"type": "record", "name": name, "namespace": namespace, "fields": fields})


ID = {"name": "id", "type": "string"}
V1 = record("Order", [ID, {"name": "amount_minor", "type": "long"}])
V2 = record(
    "Order",
    [ID, {"name": "amount_minor", "type": "long"},
     {"name": "note", "type": ["null", "string"], "default": None}],
)


def avro(text):
    return Schema(text, "AVRO")


@pytest.fixture
def client():
    # A client per test: the client caches ids and versions, tests must see the registry.
    return SchemaRegistryClient({"url": REGISTRY})


@pytest.fixture
def subject():
    return f"pytest-{uuid.uuid4().hex}-value"


def expect_error(call, http_status, error_code):
    with pytest.raises(SchemaRegistryError) as raised:
        call()
    assert raised.value.http_status_code == http_status, raised.value
    assert raised.value.error_code == error_code, raised.value
    assert raised.value.error_message, raised.value
    return raised.value


def test_register_get_and_lookup(client, subject):
    schema_id = client.register_schema(subject, avro(V1))
    assert schema_id > 0
    # The same schema again, reformatted: same id, no new version.
    reformatted = json.dumps(json.loads(V1), indent=2, sort_keys=True)
    assert SchemaRegistryClient({"url": REGISTRY}).register_schema(subject, avro(reformatted)) == schema_id
    assert client.get_versions(subject) == [1]

    fetched = client.get_schema(schema_id)
    assert fetched.schema_type == "AVRO"
    assert fetched.schema_str == V1  # as registered

    latest = client.get_latest_version(subject)
    assert (latest.schema_id, latest.subject, latest.version) == (schema_id, subject, 1)
    assert client.get_version(subject, 1).schema_id == schema_id

    found = client.lookup_schema(subject, avro(reformatted))
    assert (found.schema_id, found.version) == (schema_id, 1)
    assert subject in client.get_subjects()
    assert subject in client.get_subjects_by_schema_id(schema_id)

    # One global id per schema, whatever the subject.
    other = f"pytest-{uuid.uuid4().hex}-value"
    assert client.register_schema(other, avro(V1)) == schema_id


def test_default_level_rejects_incompatible_registration_with_409(client, subject):
    client.register_schema(subject, avro(V1))
    # A field without default: BACKWARD (the default level) refuses it.
    incompatible = record("Order", [ID, {"name": "amount_minor", "type": "long"},
                                    {"name": "currency", "type": "string"}])
    assert client.test_compatibility(subject, avro(incompatible)) is False
    error = expect_error(lambda: client.register_schema(subject, avro(incompatible)), 409, 409)
    assert "currency" in error.error_message
    assert client.test_compatibility(subject, avro(V2)) is True
    assert client.test_compatibility_all_versions(subject, avro(V2)) is True
    client.register_schema(subject, avro(V2))
    assert client.get_latest_version(subject).version == 2


@pytest.mark.parametrize(
    "name,old,new,expected",
    [
        ("add field with default", [ID], [ID, {"name": "n", "type": "long", "default": 0}],
         [True] * 7),
        ("add field without default", [ID], [ID, {"name": "n", "type": "long"}],
         [True, False, False, True, True, False, False]),
        ("remove required field", [ID, {"name": "n", "type": "long"}], [ID],
         [True, True, True, False, False, False, False]),
        ("promote int to long", [{"name": "n", "type": "int"}], [{"name": "n", "type": "long"}],
         [True, True, True, False, False, False, False]),
        ("enum symbol added",
         [{"name": "s", "type": {"type": "enum", "name": "S", "symbols": ["A", "B"]}}],
         [{"name": "s", "type": {"type": "enum", "name": "S", "symbols": ["A", "B", "C"]}}],
         [True, True, True, False, False, False, False]),
        ("enum symbol removed",
         [{"name": "s", "type": {"type": "enum", "name": "S", "symbols": ["A", "B", "C"]}}],
         [{"name": "s", "type": {"type": "enum", "name": "S", "symbols": ["A", "B"]}}],
         [True, False, False, True, True, False, False]),
        ("union widened",
         [{"name": "x", "type": ["null", "string"], "default": None}],
         [{"name": "x", "type": ["null", "string", "long"], "default": None}],
         [True, True, True, False, False, False, False]),
    ],
)
def test_each_level_on_each_evolution(client, name, old, new, expected):
    for level, compatible in zip(LEVELS, expected):
        subject = f"pytest-{uuid.uuid4().hex}-value"
        # set_config hands back the registry's answer as a dict: Confluent echoes the request.
        updated = client.set_config(subject, ServerConfig(compatibility=ConfigCompatibilityLevel(level)))
        assert updated == {"compatibility": level}
        assert client.get_config(subject).compatibility_level.value == level
        client.register_schema(subject, avro(record("Evo", old)))
        assert client.test_compatibility(subject, avro(record("Evo", new)), verbose=True) is compatible, (name, level)
        if compatible:
            client.register_schema(subject, avro(record("Evo", new)))
            assert client.get_versions(subject) == [1, 2], (name, level)
        else:
            expect_error(lambda: client.register_schema(subject, avro(record("Evo", new))), 409, 409)
            assert client.get_versions(subject) == [1], (name, level)


def test_config_per_subject(client, subject):
    # No level of its own yet: 40408; the global one on request.
    expect_error(lambda: client.get_config(subject), 404, 40408)
    assert client.get_compatibility() in LEVELS
    assert client.set_compatibility(subject, "full_transitive")["compatibility"] == "FULL_TRANSITIVE"
    assert client.get_compatibility(subject) == "FULL_TRANSITIVE"
    deleted = client.delete_config(subject)
    assert deleted.compatibility_level == ConfigCompatibilityLevel.FULL_TRANSITIVE
    expect_error(lambda: client.get_config(subject), 404, 40408)
    expect_error(lambda: client.set_compatibility(subject, "SIDEWAYS"), 422, 42203)


def test_delete_subject_and_versions(client, subject):
    first = client.register_schema(subject, avro(V1))
    client.register_schema(subject, avro(V2))

    expect_error(lambda: client.delete_subject(subject, permanent=True), 404, 40405)
    assert client.delete_version(subject, 2) == 2
    expect_error(lambda: client.delete_version(subject, 2), 404, 40406)
    expect_error(lambda: client.delete_version(subject, 1, permanent=True), 404, 40407)
    assert client.get_versions(subject) == [1]
    assert client.get_versions(subject, deleted=True) == [1, 2]
    assert client.delete_version(subject, 2, permanent=True) == 2

    assert client.delete_subject(subject) == [1]
    expect_error(lambda: client.get_versions(subject), 404, 40401)
    expect_error(lambda: client.delete_subject(subject), 404, 40404)
    assert client.delete_subject(subject, permanent=True) == [1]
    # The id outlives its subject: records written with it still decode.
    assert SchemaRegistryClient({"url": REGISTRY}).get_schema(first).schema_str == V1


def test_confluent_error_codes(client, subject):
    client.register_schema(subject, avro(V1))
    expect_error(lambda: client.get_latest_version(f"missing-{uuid.uuid4().hex}"), 404, 40401)
    expect_error(lambda: client.get_version(subject, 42), 404, 40402)
    expect_error(lambda: client.get_schema(2_000_000_000), 404, 40403)
    expect_error(lambda: client.lookup_schema(subject, avro(record("Unknown", [ID]))), 404, 40403)
    expect_error(lambda: client.register_schema(subject, avro('{"type":"record","name":"X"}')), 422, 42201)
    expect_error(lambda: client.register_schema(subject, avro("not json")), 422, 42201)
    expect_error(lambda: client.register_schema(subject, Schema('syntax = "proto3";', "PROTOBUF")), 422, 42201)
    expect_error(lambda: client.test_compatibility(subject, avro(V2), version=0), 422, 42202)


def test_v1_consumer_decodes_v2_events_and_v2_without_a_required_field_is_refused(client):
    topic = f"pytest.requested.{uuid.uuid4().hex}"
    subject = f"{topic}-value"
    with open(os.path.join(SCHEMAS, "payments.requested.v1.avsc")) as f:
        v1_text = f.read()
    v1 = json.loads(v1_text)
    v2 = dict(v1, fields=v1["fields"] + [
        {"name": "risk_score", "type": ["null", "int"], "default": None, "doc": "Fraud score."}])
    # The project's level (what `paystream schemas register` sets).
    client.set_compatibility(subject, "FULL_TRANSITIVE")
    client.register_schema(subject, avro(v1_text))

    # A v2 producer (Confluent's serializer registers v2 itself) and a consumer built on v1.
    serializer = AvroSerializer(client, json.dumps(v2))
    event = {
        "event_id": "evt_1", "payment_id": "pay_1", "client_id": "client_1",
        "merchant_id": "m_1", "customer_id": "c_1", "amount_minor": 1999, "currency": "EUR",
        "payment_method": "card", "requested_at": 1_700_000_000_000, "risk_score": 17,
    }
    ctx = SerializationContext(topic, MessageField.VALUE)
    payload = serializer(event, ctx)
    assert client.get_latest_version(subject).version == 2
    assert int.from_bytes(payload[1:5], "big") == client.get_latest_version(subject).schema_id
    deserializer = AvroDeserializer(client, v1_text)
    decoded = deserializer(payload, ctx)
    assert "risk_score" not in decoded
    assert decoded["payment_id"] == "pay_1" and decoded["amount_minor"] == 1999

    removed = dict(v1, fields=[f for f in v1["fields"] if f["name"] != "customer_id"])
    error = expect_error(lambda: client.register_schema(subject, avro(json.dumps(removed))), 409, 409)
    assert "customer_id" in error.error_message
    assert client.get_versions(subject) == [1, 2]
