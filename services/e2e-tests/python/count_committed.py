"""Counts the records of a topic as a stock Confluent client sees them under read_committed.

The Rust crash, fencing and broker-restart tests use this as their third-party oracle: it reads
every partition from the beginning with Python confluent-kafka (librdkafka underneath, but not
our code or configuration) and stops once it has reached the end of every partition, which
under read_committed is the last stable offset: records of aborted transactions are never
returned, and an open transaction holds the end back.

    python count_committed.py --bootstrap 127.0.0.1:9092 --topic T [--timeout 60] [--last-values]

Prints one JSON object: {"records": N, "per_key": {key: count}, "partitions": P}, with
--last-values also "last_values": {key: hex of the value of the key's last record} (the record a
compacted topic keeps; keys of one partition only, as producers by key make them).
"""

import argparse
import binascii
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException, TopicPartition


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--last-values", action="store_true")
    args = parser.parse_args()

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"count-committed-{uuid.uuid4()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    metadata = consumer.list_topics(args.topic, timeout=10)
    topic = metadata.topics.get(args.topic)
    if topic is None or topic.error is not None:
        print(f"topic {args.topic} not found: {topic.error if topic else 'absent'}", file=sys.stderr)
        return 2
    partitions = sorted(topic.partitions)
    consumer.assign([TopicPartition(args.topic, p, 0) for p in partitions])

    per_key = {}
    last_values = {}
    records = 0
    at_end = set()
    deadline = time.monotonic() + args.timeout
    while len(at_end) < len(partitions):
        if time.monotonic() > deadline:
            print(f"not at the end of every partition after {args.timeout}s", file=sys.stderr)
            return 3
        message = consumer.poll(1.0)
        if message is None:
            continue
        if message.error():
            if message.error().code() == -191:  # _PARTITION_EOF: read up to the end
                at_end.add(message.partition())
                continue
            raise KafkaException(message.error())
        at_end.discard(message.partition())
        records += 1
        key = (message.key() or b"").decode("utf-8", "replace")
        per_key[key] = per_key.get(key, 0) + 1
        if args.last_values:
            last_values[key] = binascii.hexlify(message.value() or b"").decode("ascii")
    consumer.close()
    result = {"records": records, "per_key": per_key, "partitions": len(partitions)}
    if args.last_values:
        result["last_values"] = last_values
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
