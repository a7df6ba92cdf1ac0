#!/usr/bin/env python3
"""boto3's Table.batch_writer(), used the way its documentation shows, writing the same stream
as the other writers (`loadgen --ops-out`): one batch writer per table (with
`overwrite_by_pkeys`, the documented way to avoid duplicate keys in one batch), puts and deletes
through the writers, UpdateItem (SET, set ADD / DELETE) sent directly with `Table.update_item`,
since a batch writer cannot carry updates. Single-threaded, as a script using it would be.

Stops taking events after --max-seconds (the events taken are a prefix of the stream), closes
the writers (flushing them) and prints one JSON object: events, seconds, per-event latency.
"""

import argparse
import base64
import json
import sys
import time
from decimal import Decimal

import boto3
from boto3.dynamodb.types import Binary
from botocore.config import Config
from botocore.exceptions import ClientError

KEYS = {
    "mqtt_client": ["clientid"],
    "mqtt_sub": ["clientid", "topic"],
    "mqtt_msg": ["msgid"],
    "mqtt_topic_msg_map": ["topic"],
    "mqtt_retain": ["topic"],
    "mqtt_acked": ["topic", "clientid"],
}


def value(v):
    """DynamoDB JSON -> the Python types boto3's resource layer takes."""
    (kind, x), = v.items()
    if kind == "S":
        return x
    if kind == "N":
        return Decimal(x)
    if kind == "B":
        return Binary(base64.b64decode(x))
    if kind == "SS":
        return set(x)
    raise ValueError(f"unsupported value {v}")


def item(m):
    return {k: value(v) for k, v in m.items()}


def quantile(sorted_values, q):
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--ops", required=True)
    ap.add_argument("--max-seconds", type=float, default=20.0)
    ap.add_argument("--json")
    args = ap.parse_args()

    resource = boto3.resource(
        "dynamodb",
        endpoint_url=args.endpoint,
        region_name="us-west-2",
        aws_access_key_id="peer",
        aws_secret_access_key="peer",
        config=Config(retries={"mode": "standard"}),
    )
    tables = {name: resource.Table(name) for name in KEYS}
    writers = {
        name: t.batch_writer(overwrite_by_pkeys=KEYS[name]) for name, t in tables.items()
    }
    for w in writers.values():
        w.__enter__()

    latencies = []
    errors = []
    events = 0
    start = time.monotonic()
    with open(args.ops) as f:
        for line in f:
            if time.monotonic() - start >= args.max_seconds:
                break
            ev = json.loads(line)
            t0 = time.monotonic()
            for op in ev["ops"]:
                name, kind = op["table"], op["kind"]
                try:
                    if kind == "put":
                        writers[name].put_item(Item=item(op["item"]))
                    elif kind == "delete":
                        writers[name].delete_item(Key=item(op["key"]))
                    elif kind == "update":
                        names, values, parts = {}, {}, []
                        for i, (attr, v) in enumerate(op["set"].items()):
                            names[f"#a{i}"] = attr
                            values[f":a{i}"] = value(v)
                            parts.append(f"#a{i} = :a{i}")
                        kwargs = {}
                        if op.get("guard"):
                            names["#g"] = op["guard"][0]
                            values[":g"] = value(op["guard"][1])
                            kwargs["ConditionExpression"] = "#g = :g"
                        try:
                            tables[name].update_item(
                                Key=item(op["key"]),
                                UpdateExpression="SET " + ", ".join(parts),
                                ExpressionAttributeNames=names,
                                ExpressionAttributeValues=values,
                                **kwargs,
                            )
                        except ClientError as e:
                            if e.response["Error"]["Code"] != "ConditionalCheckFailedException":
                                raise
                    elif kind in ("add", "remove"):
                        tables[name].update_item(
                            Key=item(op["key"]),
                            UpdateExpression=("ADD" if kind == "add" else "DELETE") + " #s :m",
                            ExpressionAttributeNames={"#s": op["attr"]},
                            ExpressionAttributeValues={":m": set(op["members"])},
                        )
                except ClientError as e:
                    if len(errors) < 5:
                        errors.append(f"event {events}: {kind} on {name}: {e}")
            latencies.append(time.monotonic() - t0)
            events += 1
    for w in writers.values():
        w.__exit__(None, None, None)
    seconds = time.monotonic() - start
    latencies.sort()
    out = {
        "writer": "boto3",
        "events": events,
        "seconds": seconds,
        "events_per_s": events / seconds if seconds else 0.0,
        "p50_ms": quantile(latencies, 0.5) * 1000,
        "p99_ms": quantile(latencies, 0.99) * 1000,
        "errors": errors,
    }
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
