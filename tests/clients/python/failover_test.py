"""tern.Client given several ternd addresses: it follows a standby's NOT_LEADER answer to
the leader (a real ternd, conftest.py's `service`), skips an unreachable address, never
calls a leader address it was not given, and works the same for streams."""

import concurrent.futures

import grpc
import pytest

from tern import Client, errors
from tern._failover import parse_addresses
from tern._pb import rpc_error_details_pb2, rpc_status_pb2

from conftest import free_port


class _Standby:
    """A gRPC server that answers every method as a standby ternd does (UNAVAILABLE,
    reason NOT_LEADER, metadata leader_address), counting the calls."""

    def __init__(self, leader_address):
        self.leader_address = leader_address
        self.calls = 0
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers([self])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()

    # grpc.GenericRpcHandler
    def service(self, handler_call_details):
        def refuse(request, context):
            self.calls += 1
            info = rpc_error_details_pb2.ErrorInfo(
                reason="NOT_LEADER", domain="tern.v1",
                metadata={"leader_address": self.leader_address})
            status = rpc_status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0],
                                           message="a standby")
            status.details.add().Pack(info)
            context.set_trailing_metadata((("grpc-status-details-bin",
                                            status.SerializeToString()),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "a standby")

        if handler_call_details.method.endswith("/WatchJob") or \
                handler_call_details.method.endswith("/GetArtifact"):
            def stream(request, context):
                refuse(request, context)
                yield b""  # never reached
            return grpc.unary_stream_rpc_method_handler(stream)
        return grpc.unary_unary_rpc_method_handler(refuse)

    def stop(self):
        self.server.stop(0)


@pytest.fixture
def standby(service):
    s = _Standby(service)
    yield s
    s.stop()


def test_addresses_parse_from_a_string_or_a_list():
    assert parse_addresses("a:1, b:2,a:1") == ["a:1", "b:2"]
    assert parse_addresses(["a:1", "b:2"]) == ["a:1", "b:2"]
    for bad in ("", "a:1,,b:2", "a", "a:"):
        with pytest.raises(ValueError):
            parse_addresses(bad)


def test_a_standby_sends_the_client_to_the_leader(service, standby):
    with Client(f"{standby.address},{service}", owner="pytest") as c:
        assert c.whoami()["name"] == "pytest"
        assert c.address == service
        calls = standby.calls
        assert calls == 1
        list(c.list(limit=1))
        assert standby.calls == calls  # it stays on the leader


def test_an_unreachable_address_and_an_unknown_leader_are_skipped(service, standby):
    standby.leader_address = "10.255.255.1:7070"  # not given: never called
    dead = f"127.0.0.1:{free_port()}"
    with Client([standby.address, dead, service], owner="pytest", timeout=10) as c:
        c.whoami()
        assert c.address == service


def test_a_watch_opened_on_a_standby_resumes_on_the_leader(service, standby, jobs):
    with Client([standby.address, service], owner="pytest") as c:
        events = list(c.watch(jobs["hla"].id, timeout=120))
        assert events and events[-1].kind in ("finished", "state_changed")
        assert c.address == service


def test_nobody_leading_ends_in_unavailable_within_the_timeout(standby):
    standby.leader_address = ""
    with Client([standby.address, f"127.0.0.1:{free_port()}"], timeout=1.5) as c:
        with pytest.raises(errors.Unavailable):
            c.whoami()
    assert 2 <= standby.calls <= 8
