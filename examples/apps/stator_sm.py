"""A dependency-free Python SDK for stator-sm/1 (Python 3.9+, standard library only).

Subclass App, then call serve(app): it connects to the socket the stator agent
named in STATOR_SM_SOCKET and answers requests until the agent hangs up.
docs/PROTOCOL.md documents every byte this module reads and writes.
"""

import os
import socket
import struct
import sys

HANDSHAKE = b"stator-sm/1\n"
# Largest frame either side accepts (type byte + body); must match the host.
MAX_FRAME_BYTES = 64 * 1024 * 1024

TYPE_APPLY = 0x01
TYPE_QUERY = 0x02
TYPE_SNAPSHOT = 0x03
TYPE_RESTORE = 0x04
TYPE_OK = 0x80
TYPE_ERROR = 0x81

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U64_U64 = struct.Struct(">QQ")


class ProtocolError(Exception):
    """The host sent something that is not stator-sm/1."""


class App:
    """A deterministic state machine. Override all four methods.

    apply must depend only on the state, index, time_ms and command: no clocks,
    no randomness, no environment. A client's bad command should produce an error
    reply, not an exception: an exception is reported to the host, which stops the
    replica.
    """

    def apply(self, index, time_ms, command):
        """Apply one committed command (bytes); return the reply (bytes)."""
        raise NotImplementedError

    def query(self, time_ms, request):
        """Answer a read-only request (bytes); return the reply (bytes)."""
        raise NotImplementedError

    def snapshot(self):
        """Return the whole state as bytes."""
        raise NotImplementedError

    def restore(self, snapshot):
        """Replace the whole state with bytes returned by snapshot()."""
        raise NotImplementedError


def environment():
    """The STATOR_* variables the agent sets, as a dict (missing ones are None)."""
    return {
        "socket": os.environ.get("STATOR_SM_SOCKET"),
        "service": os.environ.get("STATOR_SERVICE"),
        "partition": os.environ.get("STATOR_PARTITION"),
        "replica": os.environ.get("STATOR_REPLICA"),
    }


def encode_frame(type_byte, body=b""):
    """One frame: u32 big-endian length (type byte + body), the type byte, the body."""
    length = 1 + len(body)
    if length > MAX_FRAME_BYTES:
        raise ProtocolError("frame of %d bytes exceeds %d" % (length, MAX_FRAME_BYTES))
    return _U32.pack(length) + bytes((type_byte,)) + bytes(body)


def _read_exact(stream, count):
    data = stream.read(count)
    if data is None or len(data) != count:
        raise ProtocolError("host closed the socket mid-frame")
    return data


def read_frame(stream):
    """Read one frame; return (type_byte, body) or None on a clean close."""
    prefix = stream.read(4)
    if not prefix:
        return None
    if len(prefix) != 4:
        raise ProtocolError("host closed the socket mid-frame")
    (length,) = _U32.unpack(prefix)
    if length == 0 or length > MAX_FRAME_BYTES:
        raise ProtocolError("bad frame length %d" % length)
    frame = _read_exact(stream, length)
    return frame[0], frame[1:]


def handle(app, type_byte, body):
    """Run one request through app; return the response frame."""
    try:
        if type_byte == TYPE_APPLY:
            if len(body) < 16:
                raise ProtocolError("APPLY body of %d bytes, need 16" % len(body))
            index, time_ms = _U64_U64.unpack_from(body)
            reply = app.apply(index, time_ms, bytes(body[16:]))
        elif type_byte == TYPE_QUERY:
            if len(body) < 8:
                raise ProtocolError("QUERY body of %d bytes, need 8" % len(body))
            (time_ms,) = _U64.unpack_from(body)
            reply = app.query(time_ms, bytes(body[8:]))
        elif type_byte == TYPE_SNAPSHOT:
            if body:
                raise ProtocolError("SNAPSHOT with a %d-byte body, want none" % len(body))
            reply = app.snapshot()
        elif type_byte == TYPE_RESTORE:
            app.restore(bytes(body))
            reply = b""
        else:
            raise ProtocolError("unknown request type 0x%02x" % type_byte)
        return encode_frame(TYPE_OK, reply)
    except ProtocolError:
        raise
    except Exception as error:  # the app's bug: report it, the host stops the replica
        message = "%s: %s" % (type(error).__name__, error)
        return encode_frame(TYPE_ERROR, message.encode("utf-8", "replace"))


def serve(app, socket_path=None):
    """Connect to the host and serve app until the host closes the connection."""
    path = socket_path or os.environ.get("STATOR_SM_SOCKET")
    if not path:
        raise SystemExit("STATOR_SM_SOCKET is not set: run this app under a stator agent")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    try:
        sock.sendall(HANDSHAKE)
        stream = sock.makefile("rb")
        greeting = _read_exact(stream, len(HANDSHAKE))
        if greeting != HANDSHAKE:
            raise ProtocolError("host greeted with %r, expected %r" % (greeting, HANDSHAKE))
        while True:
            frame = read_frame(stream)
            if frame is None:
                return
            sock.sendall(handle(app, frame[0], frame[1]))
    finally:
        sock.close()


def main(app):
    """serve(app), turning a broken connection into a one-line error and exit code 1."""
    try:
        serve(app)
    except (ProtocolError, OSError) as error:
        print("stator-sm: %s" % error, file=sys.stderr)
        sys.exit(1)
