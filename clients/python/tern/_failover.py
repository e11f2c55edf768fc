"""Which ternd a Client calls when it was given several (tern.Client("a:7070,b:7070")).

Several ternd may share one store: one leads, the others answer every call UNAVAILABLE
with reason NOT_LEADER and the leader's address (ErrorInfo metadata "leader_address";
LEADERSHIP_LOST from a leader that just lost its lease). The same rules as ternctl's and
tern-agent's (failover/server_list.h):
  - NOT_LEADER / LEADERSHIP_LOST naming one of the given addresses: that one, at once;
    naming none or an address not given: the next one (an address nobody configured is
    never called: it would get the caller's token and client certificate);
  - any other UNAVAILABLE: the next address;
  - after a whole round without success, a growing delay (0.1 s doubling to 1 s).
With one address only NOT_LEADER is retried (there, after those delays).
Thread-safe.
"""

import threading

import grpc

from tern import errors

_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 1.0
_NOT_LEADER = ("NOT_LEADER", "LEADERSHIP_LOST")


def parse_addresses(address):
    """A list of "host:port" from "a:1,b:2" or a list/tuple of them (duplicates dropped);
    ValueError for an empty list or entry."""
    items = address.split(",") if isinstance(address, str) else list(address)
    out = []
    for item in items:
        item = str(item).strip()
        if not item or ":" not in item or item.endswith(":"):
            raise ValueError(f"address: {address!r} has an entry that is not HOST:PORT "
                             f"({item!r})")
        if item not in out:
            out.append(item)
    if not out:
        raise ValueError("address: no ternd address given")
    return out


def leader_hint(error):
    """(not_leader, leader_address) of a grpc.RpcError."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return False, ""
    details = errors.decode_details(errors._details_of(error))  # noqa: SLF001 - same package
    if details.get("reason") not in _NOT_LEADER:
        return False, ""
    return True, details.get("metadata", {}).get("leader_address", "")


class ServerList:
    """The addresses, one stub per address (made by `make_stub(address)`), and the current
    position."""

    def __init__(self, addresses, make_stub):
        self.addresses = list(addresses)
        self.stubs = [make_stub(a) for a in self.addresses]
        self._lock = threading.Lock()
        self._current = 0
        self._failures = 0

    def current(self):
        """(index, stub) of the ternd to call now."""
        with self._lock:
            return self._current, self.stubs[self._current]

    def on_success(self, index):
        with self._lock:
            self._failures = 0

    def _backoff(self):
        rounds = max(1, self._failures // len(self.addresses))
        return min(_FIRST_BACKOFF * 2 ** (rounds - 1), _MAX_BACKOFF)

    def on_failure(self, index, error):
        """After a call to `index` failed with `error`: seconds to wait before calling
        current() again, or None when the error is not one to retry elsewhere (then the
        caller's own rules apply)."""
        if error.code() != grpc.StatusCode.UNAVAILABLE:
            return None
        not_leader, leader = leader_hint(error)
        n = len(self.addresses)
        if n == 1 and not not_leader:
            return None
        with self._lock:
            self._failures += 1
            if index != self._current:
                return 0.0  # another call moved on already
            if not_leader and leader in self.addresses:
                target = self.addresses.index(leader)
                self._current = target
                if target == index or self._failures > 2 * n:
                    return self._backoff()
                return 0.0
            self._current = (index + 1) % n
            return self._backoff() if self._failures % n == 0 else 0.0
