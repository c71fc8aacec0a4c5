#!/usr/bin/env python3
"""Writes the seed inputs in fuzz/seeds/<target>/: a few valid messages per parser, so
the fuzzer starts from the real formats instead of discovering them byte by byte.
Run from anywhere: python3 fuzz/seeds/make_seeds.py (the files are committed)."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# --- resp: commands (arrays and inline) and replies -----------------------------------
write("resp", "set", b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n")
write("resp", "mset_two", b"*5\r\n$4\r\nMSET\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$0\r\n\r\n*1\r\n$4\r\nPING\r\n")
write("resp", "inline", b"SET \"a b\\x41\\n\" 'it\\'s' plain\r\n")
write("resp", "reply_array", b"*4\r\n+OK\r\n-ERR wrong\r\n:-42\r\n*2\r\n$3\r\nfoo\r\n$-1\r\n")
write("resp", "reply_nulls", b"*-1\r\n_\r\n")


# --- transport_frame: postcard-encoded transport messages -----------------------------
def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def string(s):
    b = s.encode()
    return varint(len(b)) + b


def frame(body):
    return struct.pack(">I", len(body)) + body


def leader_id(term, node):
    return varint(term) + varint(node)


def log_id(term, node, index):
    return leader_id(term, node) + varint(index)


def vote(term, node, committed):
    return leader_id(term, node) + bytes([1 if committed else 0])


hello = frame(varint(0) + varint(2) + varint(7) + string("127.0.0.1:7100") + bytes(range(32)))
proof = frame(varint(1) + bytes(32))
client = frame(
    varint(2) + varint(5) + varint(3) + varint(65537)
    + varint(9) + varint(3) + varint(0) + varint(14) + b"*1\r\n$4\r\nPING\r\n"
)
elect = frame(varint(2) + varint(6) + varint(4) + varint(1))
vote_request = frame(
    varint(2) + varint(7) + varint(1) + varint(65537)
    + vote(2, 1, False) + b"\x01" + log_id(1, 1, 10)
)
# Command { time_ms, writes: [Write { client_id, seq, payload }] }
command = varint(1_700_000_000_000) + varint(1) + varint(9) + varint(3) + varint(2) + b"+1"
append = frame(
    varint(2) + varint(8) + varint(0) + varint(65537)
    + vote(2, 1, True) + b"\x01" + log_id(1, 1, 10)
    + varint(2)
    + log_id(2, 1, 11) + varint(0)            # Blank
    + log_id(2, 1, 12) + varint(1) + command  # Normal(Command)
    + b"\x01" + log_id(2, 1, 12)
)
not_leader = frame(
    varint(3) + varint(5) + varint(3) + varint(1)
    + b"\x01" + varint(2) + b"\x01" + string("127.0.0.1:7101")
)
no_group = frame(varint(3) + varint(6) + varint(5))
ping = varint(14) + b"*1\r\n$4\r\nPING\r\n"
client_batch = frame(
    varint(2) + varint(9) + varint(5) + varint(2)
    + varint(65537) + varint(9) + varint(3) + varint(0) + ping
    + varint(65537) + varint(0) + varint(0) + varint(1) + ping
)
write("transport_frame", "handshake", hello + proof)
write("transport_frame", "client_request", client)
write("transport_frame", "elect_and_vote", elect + vote_request)
write("transport_frame", "append", append)
write("transport_frame", "responses", not_leader + no_group)
write("transport_frame", "client_batch", client_batch)


# --- sm_frame: stator-sm/1 frames -----------------------------------------------------
def sm(type_byte, body=b""):
    return struct.pack(">I", 1 + len(body)) + bytes([type_byte]) + body


write("sm_frame", "apply", sm(0x01, struct.pack(">QQ", 7, 1_700_000_000_000) + b"+1"))
write("sm_frame", "query_snapshot", sm(0x02, struct.pack(">Q", 9) + b"get") + sm(0x03))
write("sm_frame", "restore_ok_error", sm(0x04, b"state") + sm(0x80, b"reply") + sm(0x81, b"bad"))

# --- spec: first byte picks the format (0 TOML, 1 YAML, 2 JSON, 3 auto) ---------------
write("spec", "kv_toml", b"\x00" + b"""name = "sessions"
kind = "replicated"
partitions = 8
replicas = 3
app = { builtin = "kv" }
expose = { resp = "127.0.0.1:6380" }
resources = { cpu = "250m", memory = "128Mi" }
placement = { spread = "zone" }
qos = { p99_latency_ms = 5 }
""")
write("spec", "stateless_yaml", b"\x01" + b"""name: web
kind: stateless
instances: 2
port: 8080
app:
  process:
    command: ["python3", "-m", "http.server"]
    env: { MODE: prod }
resources: { cpu: 0.5, memory: 64Mi }
readiness: { http: { path: /healthz } }
""")
write("spec", "job_json", b"\x02" + b"""{"name":"batch","kind":"job","completions":2,"retries":3,"backoff_ms":100,
"app":{"process":{"command":["sh","-c","exit 0"]}},"resources":{"cpu":"100m","memory":1048576}}""")
write("spec", "pool_auto", b"\x03" + b"""name = "pool-a"
cpu = "4"
memory = "16Gi"
price_per_hour = 0.19
boot_delay_s = 60
min = 1
max = 10
""")
