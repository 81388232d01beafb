"""InFlight: when the batcher may treat a request as the only one the process serves."""

from __future__ import annotations

from service.http.middleware import InFlight

A, B = ("10.0.0.1", 50001), ("10.0.0.2", 50002)


def test_one_client_back_to_back_is_alone_from_its_second_request() -> None:
    f = InFlight()
    f.started(A)
    assert not f.alone(), "no predecessor on this connection yet"
    f.finished()
    f.started(A)
    assert f.alone()
    f.finished()
    assert f.count == 0


def test_clients_taking_turns_are_never_alone() -> None:
    f = InFlight()
    for client in (A, B, A, B, A):
        f.started(client)
        assert not f.alone()
        f.finished()


def test_a_second_request_in_flight_ends_being_alone() -> None:
    f = InFlight()
    for _ in range(3):
        f.started(A)
        f.finished()
    f.started(A)
    f.started(B)  # arrives while the first is still being served
    assert not f.alone()
    f.finished()
    f.finished()
    f.started(A)
    assert not f.alone(), "the streak restarts after another connection was served"


def test_requests_without_a_client_address_are_never_alone() -> None:
    f = InFlight()
    for _ in range(3):
        f.started(None)
        assert not f.alone()
        f.finished()
