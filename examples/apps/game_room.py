"""A game room served over stator-sm/1: players join, move on a grid and leave.

Commands (APPLY) are small JSON objects:
    {"op": "join",  "player": "ana"}
    {"op": "move",  "player": "ana", "dx": 1, "dy": -2}
    {"op": "leave", "player": "ana"}
Replies are JSON: {"ok": true, ...} or {"ok": false, "error": "..."}. A bad command
gets an error reply and changes nothing: a client's mistake never stops the replica.

Queries (QUERY): empty or {"op": "room"} returns the whole room;
{"op": "player", "player": "ana"} returns one player (null if absent).

Deterministic: the only clock is the time_ms stamped into each APPLY by the leader.
Snapshots are the room as canonical JSON (sorted keys, no spaces).

Python 3.9+, standard library only. Run it under stator (see README.md) or by hand:
    STATOR_SM_SOCKET=/path/to/sm.sock python3 examples/apps/game_room.py
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stator_sm  # noqa: E402  (the SDK sits beside this file)

# The room is a GRID_SIZE x GRID_SIZE grid; positions are clamped to it.
GRID_SIZE = 100
# Players beyond this are refused: a room's state must stay small.
MAX_PLAYERS = 64
# Longer names are refused, so one command cannot bloat the state.
MAX_NAME_CHARS = 32
# A move steps at most this far per axis; larger steps are clamped.
MAX_STEP = 5


def canonical(value):
    """JSON bytes that are identical on every replica for equal values."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def clamp(value, low, high):
    return max(low, min(high, value))


class GameRoom(stator_sm.App):
    def __init__(self):
        self.players = {}
        self.last_index = 0
        self.last_time_ms = 0

    def state(self):
        return {
            "players": self.players,
            "last_index": self.last_index,
            "last_time_ms": self.last_time_ms,
        }

    # -- commands --------------------------------------------------------------

    def apply(self, index, time_ms, command):
        self.last_index = index
        self.last_time_ms = time_ms
        try:
            request = json.loads(command.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            return canonical({"ok": False, "error": "command is not JSON: %s" % error})
        if not isinstance(request, dict):
            return canonical({"ok": False, "error": "command must be a JSON object"})
        op = request.get("op")
        player = request.get("player")
        if not isinstance(player, str) or not player or len(player) > MAX_NAME_CHARS:
            return canonical({"ok": False, "error": "player must be 1-%d characters" % MAX_NAME_CHARS})
        if op == "join":
            return canonical(self.join(player, time_ms))
        if op == "move":
            return canonical(self.move(player, request.get("dx", 0), request.get("dy", 0)))
        if op == "leave":
            return canonical(self.leave(player))
        return canonical({"ok": False, "error": "unknown op %r (want join, move or leave)" % (op,)})

    def join(self, player, time_ms):
        if player in self.players:
            return {"ok": False, "error": "%s is already in the room" % player}
        if len(self.players) >= MAX_PLAYERS:
            return {"ok": False, "error": "room is full (%d players)" % MAX_PLAYERS}
        self.players[player] = {"x": 0, "y": 0, "moves": 0, "joined_ms": time_ms}
        return {"ok": True, "players": len(self.players)}

    def move(self, player, dx, dy):
        if player not in self.players:
            return {"ok": False, "error": "%s is not in the room" % player}
        # bool is an int in Python; refuse it so the rule matches other SDKs.
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in (dx, dy)):
            return {"ok": False, "error": "dx and dy must be integers"}
        state = self.players[player]
        state["x"] = clamp(state["x"] + clamp(dx, -MAX_STEP, MAX_STEP), 0, GRID_SIZE - 1)
        state["y"] = clamp(state["y"] + clamp(dy, -MAX_STEP, MAX_STEP), 0, GRID_SIZE - 1)
        state["moves"] += 1
        return {"ok": True, "x": state["x"], "y": state["y"]}

    def leave(self, player):
        if self.players.pop(player, None) is None:
            return {"ok": False, "error": "%s is not in the room" % player}
        return {"ok": True, "players": len(self.players)}

    # -- reads and snapshots ---------------------------------------------------

    def query(self, time_ms, request):
        if not request:
            return canonical(self.state())
        try:
            query = json.loads(request.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            return canonical({"error": "query is not JSON: %s" % error})
        if isinstance(query, dict) and query.get("op") == "player":
            return canonical(self.players.get(query.get("player")))
        if isinstance(query, dict) and query.get("op") in (None, "room"):
            return canonical(self.state())
        return canonical({"error": "unknown query (want room or player)"})

    def snapshot(self):
        return canonical(self.state())

    def restore(self, snapshot):
        state = json.loads(snapshot.decode("utf-8"))
        players = state["players"]
        if not isinstance(players, dict):
            raise ValueError("snapshot players must be an object")
        self.players = players
        self.last_index = int(state["last_index"])
        self.last_time_ms = int(state["last_time_ms"])


if __name__ == "__main__":
    stator_sm.main(GameRoom())
