#!/usr/bin/env python3
"""An independent ExHook client that plays EMQX against mqtt-dynamo's HookProvider server.

EMQX is the gRPC client of the ExHook protocol; this script does what EMQX does on one channel:
unary calls, each awaited before the next, 5 s request timeout, a RequestMeta on every request.
It is written in Python against the project's own proto files (proto/emqx/exhook/v{2,3}) so that
the Rust server is checked by code that shares nothing with it but the .proto text.

Usage:
    python3 exhook_client.py --target 127.0.0.1:PORT --api v2|v3 --stubs DIR \
        --mode scenario|abuse [--tag TAG]

--stubs DIR is where the Python stubs were generated, with the repository's proto/ directory as
include root:
    python3 -m grpc_tools.protoc -I proto --python_out=DIR --grpc_python_out=DIR \
        emqx/exhook/v2/exhook.proto emqx/exhook/v3/exhook.proto

Prints exactly one JSON object on stdout (diagnostics go to stderr). Exit status 0 when every call
behaved as expected, 1 otherwise.

scenario: OnProviderLoaded; OnClientConnected for pub-TAG and sub-TAG; OnSessionSubscribed
    sub-TAG to TAG/t/#; OnMessagePublish of four messages (QoS 0, 1, 2 with a non-UTF-8 payload,
    1 with an empty payload); OnMessageAcked of the QoS 1 message by sub-TAG;
    OnSessionUnsubscribed; OnClientDisconnected pub-TAG. Every call must succeed and every publish
    must answer CONTINUE, with the message (if one is returned) unchanged.

abuse: a malformed protobuf body, an unknown RPC, a string field holding invalid UTF-8, and a
    600,000-byte payload; each must get a proper gRPC error status (UNIMPLEMENTED for the unknown
    RPC), and a normal call afterwards must still succeed.
"""

import argparse
import importlib
import json
import os
import sys
import traceback

try:
    import grpc
except ImportError as _exc:  # reported as JSON by main()
    grpc = None
    GRPC_IMPORT_ERROR = _exc

NODE = "emqx@127.0.0.1"
TIMEOUT_S = 5.0  # EMQX's default exhook request_timeout
CONNECT_TIMEOUT_S = 10.0
ID_PREFIX = "0005F65F239F03FEF44300000BB4"  # 28 hex digits; 4 more make a 32-digit EMQX GUID
ID_OFFSET = {"v2": 0x100, "v3": 0x200}  # v2 and v3 runs never share message ids
HUGE_PAYLOAD_LEN = 600_000  # > DynamoDB's 400 KB item limit, < gRPC's 4 MB default


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def msg_id(api, n):
    return ID_PREFIX + format(ID_OFFSET[api] + n, "04X")


# ---------------------------------------------------------------------------
# Stubs
# ---------------------------------------------------------------------------


def load_stubs(stubs_dir, api):
    """Import emqx.exhook.<api>.exhook_pb2 and exhook_pb2_grpc from stubs_dir."""
    stubs_dir = os.path.abspath(stubs_dir)
    pkg_dir = os.path.join(stubs_dir, "emqx", "exhook", api)
    if not os.path.isfile(os.path.join(pkg_dir, "exhook_pb2.py")):
        raise RuntimeError(f"no generated stubs at {pkg_dir}/exhook_pb2.py")
    # Make emqx/, emqx/exhook/ and emqx/exhook/<api>/ regular packages so that an unrelated
    # `emqx` elsewhere on sys.path cannot shadow them.
    d = stubs_dir
    for part in ("emqx", "exhook", api):
        d = os.path.join(d, part)
        init = os.path.join(d, "__init__.py")
        if not os.path.exists(init):
            try:
                with open(init, "w"):
                    pass
            except OSError as e:  # read-only dir: namespace packages still work
                log(f"note: could not create {init}: {e}")
    sys.path.insert(0, stubs_dir)
    pb2 = importlib.import_module(f"emqx.exhook.{api}.exhook_pb2")
    pb2_grpc = importlib.import_module(f"emqx.exhook.{api}.exhook_pb2_grpc")
    return pb2, pb2_grpc


# ---------------------------------------------------------------------------
# Building requests the way EMQX fills them
# ---------------------------------------------------------------------------


class Emqx:
    def __init__(self, pb2, api):
        self.pb2 = pb2
        self.api = api

    def meta(self):
        return self.pb2.RequestMeta(
            node=NODE, version="5.8.0", sysdescr="EMQX", cluster_name="emqxcl"
        )

    def broker(self):
        return self.pb2.BrokerInfo(
            version="5.8.0", sysdescr="EMQX", uptime=1000, datetime="2023-11-14 22:13:20"
        )

    def clientinfo(self, clientid, username, peerhost, peerport):
        return self.pb2.ClientInfo(
            node=NODE,
            clientid=clientid,
            username=username,
            peerhost=peerhost,
            sockport=1883,
            protocol="mqtt",
            peerport=peerport,
        )

    def message(self, n, qos, sender, topic, payload, timestamp,
                username="alice", peerhost="10.0.0.5"):
        return self.pb2.Message(
            node=NODE,
            id=msg_id(self.api, n),
            qos=qos,
            topic=topic,
            payload=payload,
            timestamp=timestamp,
            headers={"username": username, "protocol": "mqtt", "peerhost": peerhost},
            **{"from": sender},  # `from` is a Python keyword
        )


def message_json(m):
    return {
        "id": m.id,
        "qos": m.qos,
        "from": getattr(m, "from"),
        "topic": m.topic,
        "payload_hex": m.payload.hex(),
        "timestamp": m.timestamp,
    }


def rpc_error_text(e):
    try:
        return f"{e.code().name}: {e.details()}"
    except Exception:  # noqa: BLE001 - not every RpcError is a Call
        return repr(e)


CA_FILE = None  # set from --ca: a PEM file to trust, for a TLS connection


def open_channel(target):
    if CA_FILE:
        with open(CA_FILE, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        channel = grpc.secure_channel(target, creds)
    else:
        channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
    except grpc.FutureTimeoutError:
        log(f"warning: channel to {target} not ready after {CONNECT_TIMEOUT_S} s; calling anyway")
    return channel


# ---------------------------------------------------------------------------
# scenario
# ---------------------------------------------------------------------------


def run_scenario(args, pb2, pb2_grpc):
    api, tag = args.api, args.tag
    e = Emqx(pb2, api)
    out = {
        "api": api,
        "tag": tag,
        "hooks": {},
        "messages": [],
        "publish_responses": [],
        "calls": 0,
        "errors": [],
    }
    errors = out["errors"]

    channel = open_channel(args.target)
    stub = pb2_grpc.HookProviderStub(channel)

    def call(name, request):
        out["calls"] += 1
        try:
            resp = getattr(stub, name)(request, timeout=TIMEOUT_S)
            log(f"{name}: OK")
            return resp
        except grpc.RpcError as err:
            text = f"{name}: {rpc_error_text(err)}"
            log(text)
            errors.append(text)
            return None

    # 1. provider loaded
    resp = call(
        "OnProviderLoaded", pb2.ProviderLoadedRequest(broker=e.broker(), meta=e.meta())
    )
    if resp is not None:
        for spec in resp.hooks:
            out["hooks"].setdefault(spec.name, []).extend(spec.topics)
        log(f"hooks: {out['hooks']}")

    pub_id, sub_id = f"pub-{tag}", f"sub-{tag}"
    pub = e.clientinfo(pub_id, "alice", "10.0.0.5", 50000)
    sub = e.clientinfo(sub_id, "bob", "10.0.0.6", 50001)

    def note_unregistered(hook):
        if resp is not None and hook not in out["hooks"]:
            log(f"note: {hook} was not in the LoadedResponse; EMQX would not call it")

    # 2. both clients connect
    note_unregistered("client.connected")
    call("OnClientConnected", pb2.ClientConnectedRequest(clientinfo=pub, meta=e.meta()))
    call("OnClientConnected", pb2.ClientConnectedRequest(clientinfo=sub, meta=e.meta()))

    # 3. the subscriber subscribes
    note_unregistered("session.subscribed")
    call(
        "OnSessionSubscribed",
        pb2.SessionSubscribedRequest(
            clientinfo=sub, topic=f"{tag}/t/#", subopts=pb2.SubOpts(qos=1), meta=e.meta()
        ),
    )

    # 4. the publisher publishes four messages
    note_unregistered("message.publish")
    msgs = [
        e.message(0, 0, pub_id, f"{tag}/t/0", b"zero", 1700000000000),
        e.message(1, 1, pub_id, f"{tag}/t/1", b"one", 1700000001000),
        e.message(2, 2, pub_id, f"{tag}/t/2", bytes([0xFF, 0xFE, 0x00]), 1700000002000),
        e.message(3, 1, pub_id, f"{tag}/t/3", b"", 1700000003000),
    ]
    for m in msgs:
        out["messages"].append(message_json(m))
        sent = pb2.Message()
        sent.CopyFrom(m)
        r = call("OnMessagePublish", pb2.MessagePublishRequest(message=m, meta=e.meta()))
        if r is None:
            out["publish_responses"].append({"type": None, "message_untouched": None})
            continue
        try:
            rtype = pb2.ValuedResponse.ResponsedType.Name(r.type)
        except ValueError:  # a value outside the enum
            rtype = str(r.type)
        which = r.WhichOneof("value")
        untouched = None
        if which == "message":
            untouched = r.message == sent
            if not untouched:
                errors.append(
                    f"OnMessagePublish {m.id}: returned message differs from the one sent: "
                    f"{r.message!r}"
                )
        elif which == "bool_result":
            log(f"note: OnMessagePublish {m.id} answered bool_result={r.bool_result}")
        if r.type != pb2.ValuedResponse.CONTINUE:
            errors.append(f"OnMessagePublish {m.id}: type {rtype}, expected CONTINUE")
        out["publish_responses"].append({"type": rtype, "message_untouched": untouched})

    # 5. the subscriber acks the QoS 1 message
    note_unregistered("message.acked")
    call(
        "OnMessageAcked",
        pb2.MessageAckedRequest(clientinfo=sub, message=msgs[1], meta=e.meta()),
    )

    # 6. the subscriber unsubscribes
    note_unregistered("session.unsubscribed")
    call(
        "OnSessionUnsubscribed",
        pb2.SessionUnsubscribedRequest(clientinfo=sub, topic=f"{tag}/t/#", meta=e.meta()),
    )

    # 7. the publisher disconnects
    note_unregistered("client.disconnected")
    call(
        "OnClientDisconnected",
        pb2.ClientDisconnectedRequest(clientinfo=pub, reason="normal", meta=e.meta()),
    )

    channel.close()
    return out, not errors


# ---------------------------------------------------------------------------
# abuse
# ---------------------------------------------------------------------------


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num, value):
    return varint(num << 3 | 0) + varint(value)


def field_bytes(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data


def invalid_utf8_publish(api, tag):
    """MessagePublishRequest whose Message.topic (Message field 5) is b"bad\\xff\\xfe"."""
    message = b"".join(
        [
            field_bytes(1, NODE.encode()),  # node
            field_bytes(2, msg_id(api, 0xF1).encode()),  # id
            field_varint(3, 1),  # qos
            field_bytes(4, f"pub-{tag}".encode()),  # from
            field_bytes(5, b"bad\xff\xfe"),  # topic: not UTF-8
            field_bytes(6, b"payload"),  # payload
            field_varint(7, 1700000004000),  # timestamp
        ]
    )
    meta = b"".join(
        [
            field_bytes(1, NODE.encode()),
            field_bytes(2, b"5.8.0"),
            field_bytes(3, b"EMQX"),
            field_bytes(4, b"emqxcl"),
        ]
    )
    return field_bytes(1, message) + field_bytes(2, meta)


def run_abuse(args, pb2, pb2_grpc):
    api, tag = args.api, args.tag
    e = Emqx(pb2, api)
    service = f"/emqx.exhook.{api}.HookProvider"
    channel = open_channel(args.target)
    stub = pb2_grpc.HookProviderStub(channel)

    def raw(method, body):
        mc = channel.unary_unary(
            f"{service}/{method}", request_serializer=None, response_deserializer=None
        )
        try:
            mc(body, timeout=TIMEOUT_S)
            return "OK", ""
        except grpc.RpcError as err:
            return err.code().name, err.details() or ""

    out = {"api": api}

    # 1. malformed protobuf body
    code, details = raw("OnMessagePublish", b"\xff\xff\xff\xff\x0f garbage")
    log(f"malformed: {code}: {details}")
    out["malformed"] = code

    # 2. an RPC the service does not have
    code, details = raw("OnNoSuchHook", b"")
    log(f"unknown_rpc: {code}: {details}")
    out["unknown_rpc"] = code

    # 3. a string field holding invalid UTF-8
    code, details = raw("OnMessagePublish", invalid_utf8_publish(api, tag))
    log(f"invalid_utf8: {code}: {details}")
    out["invalid_utf8"] = code

    # 4. a well-formed publish with a payload too large for one DynamoDB item
    pub = e.clientinfo(f"abuse-{tag}", "mallory", "10.0.0.7", 50002)
    huge = e.message(0xF0, 1, pub.clientid, f"{tag}/t/huge", b"\xab" * HUGE_PAYLOAD_LEN,
                     1700000005000, username="mallory", peerhost="10.0.0.7")
    # It cannot be stored, but a persistence provider must let the message through: CONTINUE
    # with the message exactly as sent.
    answer = {}
    try:
        resp = stub.OnMessagePublish(pb2.MessagePublishRequest(message=huge, meta=e.meta()),
                                     timeout=TIMEOUT_S)
        code, details = "OK", ""
        answer = {"type": pb2.ValuedResponse.ResponsedType.Name(resp.type),
                  "message_untouched": resp.message == huge}
    except grpc.RpcError as err:
        code, details = err.code().name, err.details() or ""
    log(f"huge_payload: {code}: {details} {answer}")
    out["huge_payload"] = {"code": code, "details": details, **answer}

    # 5. the server must still answer a normal call
    try:
        stub.OnClientConnected(pb2.ClientConnectedRequest(clientinfo=pub, meta=e.meta()),
                               timeout=TIMEOUT_S)
        out["after"] = "OK"
    except grpc.RpcError as err:
        out["after"] = err.code().name
        log(f"after: {rpc_error_text(err)}")
    else:
        log("after: OK")

    channel.close()

    def proper_error(c):
        return c not in ("OK", "UNAVAILABLE", "DEADLINE_EXCEEDED")

    ok = (
        out["unknown_rpc"] == "UNIMPLEMENTED"
        and proper_error(out["malformed"])
        and proper_error(out["invalid_utf8"])
        and out["huge_payload"]["code"] == "OK"
        and out["after"] == "OK"
    )
    return out, ok


# ---------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description="Play EMQX's ExHook client against a HookProvider.")
    p.add_argument("--target", required=True, help="host:port of the HookProvider server")
    p.add_argument("--api", required=True, choices=["v2", "v3"])
    p.add_argument("--stubs", required=True, help="directory holding the generated emqx/ stubs")
    p.add_argument("--mode", required=True, choices=["scenario", "abuse"])
    p.add_argument("--tag", default=None, help="prefix for client ids and topics (default: api)")
    p.add_argument("--ca", default=None, help="PEM CA certificate: connect with TLS, trusting it")
    args = p.parse_args()
    if args.tag is None:
        args.tag = args.api
    global CA_FILE
    CA_FILE = args.ca

    try:
        if grpc is None:
            raise RuntimeError(f"grpcio is not installed ({GRPC_IMPORT_ERROR}); "
                               "pip install -r tests/emqx_client/requirements.txt")
        pb2, pb2_grpc = load_stubs(args.stubs, args.api)
        if args.mode == "scenario":
            out, ok = run_scenario(args, pb2, pb2_grpc)
        else:
            out, ok = run_abuse(args, pb2, pb2_grpc)
    except Exception as exc:  # noqa: BLE001 - always end with one JSON object
        traceback.print_exc(file=sys.stderr)
        out = {"api": args.api, "mode": args.mode, "errors": [f"client failure: {exc!r}"]}
        ok = False

    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
