"""The Engine.IO session machine, driven with plain calls: no sockets, no sleeps, no clock.

Timers are actions, so a test "fires" one by calling `timer_fired`; what the session sends or
answers is read from the returned actions, in order.
"""

from __future__ import annotations

import pytest

from protocol import engine_session as eio
from protocol import engineio
from protocol.engine_session import Reply, WriteWs
from protocol.engine_session import EngineSession, State, Timer
from protocol.engineio import ErrorCode, Handshake, decode_text
from protocol.wsframe import text_frame

PING_INTERVAL, PING_TIMEOUT, UPGRADE_TIMEOUT = 25.0, 20.0, 10.0
BOUND = 1000


class Payload:
    """A pre-encoded message, as the I/O layer's `Outbound` is."""

    def __init__(self, text: bytes) -> None:
        self.size = len(text)
        self.polling = [text]
        self.ws = text_frame(text)


def machine(websocket: bool = False, allow_upgrades: bool = True) -> EngineSession:
    return EngineSession(
        "sid1",
        websocket=websocket,
        ping_interval=PING_INTERVAL,
        ping_timeout=PING_TIMEOUT,
        upgrade_timeout=UPGRADE_TIMEOUT,
        max_payload=5000,
        max_buffered_bytes=BOUND,
        allow_upgrades=allow_upgrades,
    )


def opened(websocket: bool = False) -> EngineSession:
    m = machine(websocket)
    m.open()
    return m


def held() -> EngineSession:
    """A polling session whose GET is held."""
    m = opened()
    assert m.receive_get() == [eio.HoldPoll()]
    return m


def upgrading() -> EngineSession:
    """A polling session with a held GET whose probe answered `3probe`."""
    m = held()
    m.upgrade_requested()
    m.receive_probe("2probe")
    assert m.state is State.UPGRADING
    return m


def of(outputs: list, kind: type) -> list:
    return [o for o in outputs if isinstance(o, kind)]


def closed_reasons(outputs: list) -> list[str]:
    return [o.reason for o in of(outputs, eio.Closed)]


def post(m: EngineSession, body: bytes) -> list:
    return list(m.receive_post(body))


# -- opening ----------------------------------------------------------------------------------


def test_open_on_polling_answers_the_handshake_get_and_arms_the_first_ping() -> None:
    m = machine()
    reply, timer = m.open()
    assert isinstance(reply, eio.Reply)
    hello = Handshake.from_packet(decode_text(reply.body.decode()))
    assert (hello.sid, hello.upgrades, hello.ping_interval, hello.ping_timeout, hello.max_payload) == (
        "sid1", ("websocket",), 25000, 20000, 5000,
    )  # fmt: skip
    assert timer == eio.SetTimer(Timer.PING, PING_INTERVAL)
    assert m.state is State.POLLING and m.timers == {Timer.PING}


def test_open_on_websocket_writes_the_handshake_frame_and_offers_no_upgrade() -> None:
    m = machine(websocket=True)
    write, timer = m.open()
    assert isinstance(write, eio.WriteWs)
    assert write.frames[0] == 0x81  # one FIN text frame
    hello = Handshake.from_packet(decode_text(write.frames[2:].decode()))
    assert hello.upgrades == ()
    assert timer == eio.SetTimer(Timer.PING, PING_INTERVAL)
    assert m.state is State.WEBSOCKET


def test_no_upgrade_offered_when_upgrades_are_off() -> None:
    reply = machine(allow_upgrades=False).open()[0]
    assert Handshake.from_packet(decode_text(reply.body.decode())).upgrades == ()


# -- polling GET / POST -----------------------------------------------------------------------------


def test_get_with_nothing_queued_is_held_and_released_by_the_next_flush() -> None:
    m = held()
    assert m.writable
    assert m.send(Payload(b"4a")) == eio.FLUSH_SOON
    assert m.send(Payload(b"4b")) == ()  # one flush per turn, not one per message
    assert m.flush() == [eio.ReleasePoll(b"4a\x1e4b")]
    assert not m.poll_held and not m.writable and m.queue == [] and m.queued_bytes == 0
    assert m.flush() == []


def test_get_with_output_queued_is_answered_at_once() -> None:
    m = opened()
    assert m.send(Payload(b"4a")) == ()  # no GET held: queued
    assert m.send(Payload(b"4b")) == ()
    assert m.receive_get() == [eio.Reply(b"4a\x1e4b")]
    assert not m.poll_held


def test_duplicate_get_is_refused_and_closes_the_session() -> None:
    m = held()
    out = m.receive_get()
    assert out[0] == eio.Note("eio_duplicate_get")
    assert out[1] == eio.ReplyError(ErrorCode.BAD_REQUEST)
    assert eio.ReleasePoll(b"1") in out  # the held GET learns the session is closed
    assert eio.Ended() in out and closed_reasons(out) == ["transport error"]
    assert m.state is State.CLOSED and m.timers == set()
    assert of(out, eio.CancelTimer) == [eio.CancelTimer(Timer.PING)]


def test_post_delivers_messages_in_order_after_answering_ok() -> None:
    m = opened()
    out = post(m, b"4hello\x1ebAQI=\x1e6")
    assert out == [eio.ReplyOk(), eio.Message("hello"), eio.Message(b"\x01\x02")]


def test_post_that_does_not_decode_is_refused_counted_and_closes() -> None:
    for body in (b"", b"9x", b"b!!!", b"\xff\xfe"):
        m = held()
        out = post(m, body)
        note = out[0]
        assert isinstance(note, eio.Note) and note.event == "eio_bad_payload" and note.bad_packet
        assert out[1] == eio.ReplyError(ErrorCode.BAD_REQUEST)
        assert eio.ReleasePoll(b"1") in out
        assert closed_reasons(out) == ["parse error"] and m.state is State.CLOSED
        assert not of(out, eio.Message)


def test_post_with_an_unexpected_packet_type_closes_with_parse_error() -> None:
    m = opened()
    out = post(m, b"4before\x1e2\x1e4after")
    assert out[:2] == [eio.ReplyOk(), eio.Message("before")]
    note = out[2]
    assert isinstance(note, eio.Note) and note.event == "eio_unexpected_packet" and note.bad_packet
    assert closed_reasons(out) == ["parse error"]
    assert eio.Message("after") not in out


def test_post_stops_at_a_close_made_while_handling_a_message() -> None:
    m = opened()
    outputs = m.receive_post(b"4one\x1e4two")
    assert next(outputs) == eio.ReplyOk()
    assert next(outputs) == eio.Message("one")
    m.close("server namespace disconnect")  # what the application did with "one"
    assert list(outputs) == []  # "two" is not delivered to a closed session


def test_client_close_packet_over_polling_releases_the_held_get_with_a_noop() -> None:
    m = held()
    out = post(m, b"1\x1e4ignored")
    assert out[0] == eio.ReplyOk()
    assert eio.ReleasePoll(b"6") in out
    assert closed_reasons(out) == ["transport close"] and eio.Ended() in out
    assert eio.Message("ignored") not in out


def test_post_after_close_is_unknown_and_post_while_closing_takes_no_packet() -> None:
    m = opened()
    m.close("server namespace disconnect")
    assert m.state is State.CLOSING
    assert post(m, b"4late") == [eio.ReplyOk()]
    assert m.receive_get()[0] == eio.Reply(b"1")
    assert post(m, b"4later") == [eio.ReplyError(ErrorCode.UNKNOWN_SID)]
    assert m.receive_get() == [eio.ReplyError(ErrorCode.UNKNOWN_SID)]


def test_server_close_without_a_held_get_waits_for_the_next_get_to_collect_the_close() -> None:
    m = opened()
    out = m.close("server namespace disconnect")
    assert eio.SetTimer(Timer.LINGER, PING_TIMEOUT) in out
    assert closed_reasons(out) == ["server namespace disconnect"]  # told at once
    assert eio.Ended() not in out  # but the session is kept for its `1`
    out = m.receive_get()
    assert out[0] == eio.Reply(b"1")
    assert eio.Ended() in out and eio.CancelTimer(Timer.LINGER) in out
    assert closed_reasons(out) == []  # told once
    assert m.state is State.CLOSED


def test_get_while_closing_takes_what_was_sent_before_the_close_then_the_close() -> None:
    m = opened()
    m.send(Payload(b"41"))  # e.g. the Socket.IO disconnect the server sent just before closing
    m.close("server namespace disconnect")
    assert m.receive_get()[0] == eio.Reply(b"41\x1e1")


def test_a_closed_session_whose_close_is_never_collected_is_forgotten_after_the_linger() -> None:
    m = opened()
    m.close("forced close")
    out = m.timer_fired(Timer.LINGER)
    assert eio.Ended() in out and closed_reasons(out) == []
    assert m.state is State.CLOSED


def test_server_close_with_a_held_get_flushes_first_then_sends_close() -> None:
    m = held()
    m.send(Payload(b"4last"))
    out = m.close("server shutting down")
    releases = of(out, eio.ReleasePoll)
    assert releases == [eio.ReleasePoll(b"4last")]  # what was sent before close() goes out
    assert eio.SetTimer(Timer.LINGER, PING_TIMEOUT) in out  # the next GET collects the `1`
    assert m.receive_get()[0] == eio.Reply(b"1")


def test_server_close_answers_the_held_get_with_close() -> None:
    m = held()
    out = m.close("server namespace disconnect")
    assert eio.ReleasePoll(b"1") in out and eio.Ended() in out
    assert closed_reasons(out) == ["server namespace disconnect"]


def test_poll_connection_lost_ends_the_session_with_transport_error() -> None:
    m = held()
    out = m.poll_lost()
    assert out[0] == eio.Note("eio_poll_closed")
    assert not of(out, eio.ReleasePoll)  # nobody to answer
    assert closed_reasons(out) == ["transport error"] and eio.Ended() in out
    assert m.poll_lost() == []


def test_polls_after_the_upgrade_are_stale_and_answered_late() -> None:
    m = upgrading()
    m.receive_probe("5")
    late = eio.ReplyError(ErrorCode.BAD_REQUEST, eio.STALE_POLL_DELAY)
    assert m.receive_get() == [late]
    assert post(m, b"4x") == [late]
    assert eio.STALE_POLL_DELAY > 0


# -- output bound -------------------------------------------------------------------------------------


def test_queue_over_the_bound_is_freed_at_once_and_drops_the_session_next_turn() -> None:
    m = opened()
    m.send(Payload(b"4" + b"x" * 600))
    (drop,) = m.send(Payload(b"4" + b"y" * 600))
    assert drop == eio.DropSoon(1202)
    assert m.queue == [] and m.queued_bytes == 0
    out = m.output_over_bound(drop.buffered)
    assert out[0] == eio.SlowConsumer("polling", 1202)
    assert closed_reasons(out) == ["transport error"] and eio.Ended() in out
    assert m.output_over_bound(1) == []  # once


def test_slow_consumer_with_a_held_get_aborts_it_unanswered() -> None:
    m = held()
    out = m.output_over_bound(5000)
    assert eio.AbortPoll() in out and not of(out, eio.ReleasePoll)
    assert closed_reasons(out) == ["transport error"]


def test_a_poll_answer_left_unread_over_the_bound_drops_the_session() -> None:
    m = opened()
    assert m.poll_written(BOUND) == []
    assert m.poll_written(BOUND + 1) == [eio.DropSoon(BOUND + 1)]


def test_slow_consumer_while_closing_forgets_the_session() -> None:
    m = opened()
    m.close("server namespace disconnect")
    out = m.output_over_bound(5000)
    assert eio.Ended() in out and closed_reasons(out) == []


# -- heartbeat -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("websocket", [False, True])
def test_ping_then_pong_rearms_the_next_ping(websocket: bool) -> None:
    m = opened(websocket)
    if not websocket:
        m.receive_get()
    out = m.timer_fired(Timer.PING)
    if websocket:
        assert out[0] == eio.WriteWs(text_frame(b"2"))
    else:
        assert out[0] == eio.FlushSoon() and m.flush() == [eio.ReleasePoll(b"2")]
    assert out[-1] == eio.SetTimer(Timer.PONG, PING_TIMEOUT)
    pong = m.receive_ws("3") if websocket else post(m, b"3")[1:]
    assert pong == [eio.CancelTimer(Timer.PONG), eio.SetTimer(Timer.PING, PING_INTERVAL)]
    assert m.timers == {Timer.PING}


@pytest.mark.parametrize("websocket", [False, True])
def test_pong_timeout_closes_with_ping_timeout(websocket: bool) -> None:
    m = opened(websocket)
    m.timer_fired(Timer.PING)
    out = m.timer_fired(Timer.PONG)
    assert closed_reasons(out) == ["ping timeout"] and eio.Ended() in out
    assert (eio.CloseWs(1000, "") in out) is websocket
    assert m.state is State.CLOSED


def test_blind_pongs_are_ignored() -> None:
    m = opened(websocket=True)
    assert m.receive_ws("3") == []  # no ping outstanding: the heartbeat is not put off
    m.timer_fired(Timer.PING)
    assert m.receive_ws("3") != []
    assert m.receive_ws("3") == []  # a second pong for the same ping counts for nothing
    assert m.timers == {Timer.PING}


def test_a_timer_cancelled_meanwhile_does_nothing() -> None:
    m = opened(websocket=True)
    m.timer_fired(Timer.PING)
    m.receive_ws("3")
    assert m.timer_fired(Timer.PONG) == []
    assert m.state is State.WEBSOCKET


# -- WebSocket ----------------------------------------------------------------------------------------------


def test_websocket_messages_text_and_binary() -> None:
    m = opened(websocket=True)
    assert m.receive_ws("4hi") == [eio.Message("hi")]
    assert m.receive_ws("4") == [eio.Message("")]
    assert m.receive_ws(b"\x00\x01") == [eio.Message(b"\x00\x01")]
    assert m.receive_ws("6") == []


def test_websocket_send_goes_to_the_connection() -> None:
    m = opened(websocket=True)
    p = Payload(b"4x")
    assert m.send(p) == (eio.WriteWs(p.ws),)


def test_websocket_bad_packet_is_counted_and_closes() -> None:
    m = opened(websocket=True)
    out = m.receive_ws("x")
    assert isinstance(out[0], eio.Note) and out[0].event == "eio_bad_packet" and out[0].bad_packet
    assert eio.CloseWs(1000, "") in out and closed_reasons(out) == ["parse error"]


def test_websocket_close_from_the_client_packet_and_from_the_connection() -> None:
    m = opened(websocket=True)
    out = m.receive_ws("1")
    assert eio.CloseWs(1000, "") in out and closed_reasons(out) == ["transport close"]
    m = opened(websocket=True)
    out = m.ws_closed("transport error")
    assert closed_reasons(out) == ["transport error"] and eio.Ended() in out
    assert not of(out, eio.CloseWs)
    assert m.ws_closed("transport close") == []


def test_websocket_close_from_the_server() -> None:
    m = opened(websocket=True)
    out = m.close("server namespace disconnect")
    assert out[0] == eio.CancelTimer(Timer.PING)
    assert eio.CloseWs(1000, "") in out and eio.Ended() in out
    assert closed_reasons(out) == ["server namespace disconnect"]
    assert m.close("again") == [] and m.receive_ws("4late") == []


# -- upgrade ---------------------------------------------------------------------------------------------------


def test_upgrade_with_probe_noop_and_upgrade_packet() -> None:
    m = held()
    assert m.upgrade_requested() == [eio.AcceptProbe(), eio.SetTimer(Timer.UPGRADE, UPGRADE_TIMEOUT)]
    assert m.state is State.PROBING
    out = m.receive_probe("2probe")
    assert out == [eio.WriteProbe(text_frame(b"3probe")), eio.SetTimer(Timer.UPGRADE_CHECK, eio.UPGRADE_CHECK_INTERVAL)]
    assert m.state is State.UPGRADING and m.poll_held  # the poll is not released at once
    # Messages sent during the upgrade wait for the new transport.
    queued = Payload(b"4during")
    assert m.send(queued) == () and not m.writable
    # The 100 ms check releases the held poll with a noop and re-arms itself.
    assert m.timer_fired(Timer.UPGRADE_CHECK) == [
        eio.ReleasePoll(b"6"),
        eio.SetTimer(Timer.UPGRADE_CHECK, eio.UPGRADE_CHECK_INTERVAL),
    ]
    # A GET after the noop takes what was queued meanwhile (as engine.io's polling transport).
    assert m.receive_get() == [eio.Reply(b"4during")]
    out = m.receive_probe("5")
    assert out[0] == eio.CancelTimer(Timer.UPGRADE)
    assert eio.Upgraded() in out
    assert m.state is State.WEBSOCKET and m.timers == {Timer.PING}


def test_noop_check_repeats_while_the_client_has_not_upgraded() -> None:
    m = upgrading()
    assert m.timer_fired(Timer.UPGRADE_CHECK)[0] == eio.ReleasePoll(b"6")
    assert m.receive_get() == [eio.HoldPoll()]  # nothing queued: the next GET is held
    assert m.timer_fired(Timer.UPGRADE_CHECK)[0] == eio.ReleasePoll(b"6")  # and released at the next check
    assert m.timer_fired(Timer.UPGRADE_CHECK) == [eio.SetTimer(Timer.UPGRADE_CHECK, eio.UPGRADE_CHECK_INTERVAL)]


def test_upgrade_moves_the_queue_to_the_websocket_and_releases_the_held_poll() -> None:
    m = upgrading()
    a, b = Payload(b"4a"), Payload(b"4b")
    m.send(a)
    m.send(b)
    out = m.receive_probe("5")
    assert out[0] == eio.ReleasePoll(b"6")
    assert out[-2:] == [eio.Upgraded(), eio.WriteWs(a.ws + b.ws)]
    assert m.queue == [] and m.queued_bytes == 0


def test_upgrade_packet_before_the_probe_is_a_bad_probe() -> None:
    m = held()
    m.upgrade_requested()
    out = m.receive_probe("5")
    assert out[:2] == [eio.Note("eio_bad_probe"), eio.CloseProbe(1002, "invalid upgrade")]
    assert m.state is State.POLLING and m.timers == {Timer.PING}


def test_bad_probe_ends_the_upgrade_and_the_held_poll_takes_the_queue() -> None:
    m = upgrading()
    m.send(Payload(b"4waiting"))
    out = m.receive_probe("4nonsense")
    assert out[:2] == [eio.Note("eio_bad_probe"), eio.CloseProbe(1002, "invalid upgrade")]
    assert eio.FlushSoon() in out
    assert m.state is State.POLLING and m.flush() == [eio.ReleasePoll(b"4waiting")]


def test_upgrade_timeout_closes_the_probe_and_polling_goes_on() -> None:
    m = upgrading()
    out = m.timer_fired(Timer.UPGRADE)
    assert out[:2] == [eio.Note("eio_upgrade_timeout"), eio.CloseProbe(1000, "upgrade timeout")]
    assert eio.CancelTimer(Timer.UPGRADE_CHECK) in out
    assert m.state is State.POLLING and m.timers == {Timer.PING}
    assert m.send(Payload(b"4x")) == eio.FLUSH_SOON  # polling flows again


def test_probe_closed_ends_the_upgrade() -> None:
    m = upgrading()
    out = m.probe_closed()
    assert set(out) >= {eio.CancelTimer(Timer.UPGRADE), eio.CancelTimer(Timer.UPGRADE_CHECK)}
    assert m.state is State.POLLING
    assert m.probe_closed() == []


def test_upgrade_refused_on_websocket_while_upgrading_or_when_off() -> None:
    refused = [eio.Note("eio_upgrade_refused"), eio.RefuseUpgrade()]
    assert opened(websocket=True).upgrade_requested() == refused
    m = held()
    m.upgrade_requested()
    assert m.upgrade_requested() == refused  # a second probe while one is under way
    assert m.state is State.PROBING
    m = machine(allow_upgrades=False)
    m.open()
    assert m.upgrade_requested() == refused


def test_close_during_an_upgrade_closes_the_probe() -> None:
    m = upgrading()
    out = m.close("server namespace disconnect")
    assert eio.CloseProbe(1001, "session closed") in out
    assert eio.ReleasePoll(b"1") in out and closed_reasons(out) == ["server namespace disconnect"]
    assert m.timers == set()


def test_get_while_closing_gets_close_and_ends_the_session() -> None:
    m = upgrading()
    m.timer_fired(Timer.UPGRADE_CHECK)  # the held poll went out as a noop
    m.close("server namespace disconnect")
    assert m.state is State.CLOSING
    out = m.receive_get()
    assert out[0] == eio.Reply(b"1") and eio.Ended() in out


@pytest.mark.parametrize("websocket", [True, False])
@pytest.mark.parametrize("allow_upgrades", [True, False])
def test_open_packet_is_the_handshake_encoding(websocket: bool, allow_upgrades: bool) -> None:
    """The OPEN packet comes from a per-configuration template; it must be byte for byte what
    `Handshake.to_packet` encodes, for any sid."""
    for sid in ("abcDEF_-12345678901", 'q"uo\\te'):
        m = EngineSession(sid, websocket=websocket, ping_interval=0.3, ping_timeout=0.2, max_payload=1234, allow_upgrades=allow_upgrades)
        first = m.open()[0]
        expected = engineio.encode_bytes(
            engineio.Handshake(sid, ("websocket",) if not websocket and allow_upgrades else (), 300, 200, 1234).to_packet()
        )
        if websocket:
            assert first == WriteWs(text_frame(expected))
        else:
            assert first == Reply(expected)
