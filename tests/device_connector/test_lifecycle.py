"""The embedded broker's session life cycle (device_connector.broker.lifecycle) behaves as amqtt's
`transitions` machine does, for every sequence of triggers: same states, same refusals, same enter
callbacks (which stamp the connect and disconnect times)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from amqtt.session import Session
from transitions import MachineError

from device_connector.broker import lifecycle


def run(init: Callable[[Session], object], triggers: tuple[str, ...]) -> list[object]:
    session = Session.__new__(Session)
    session.last_connect_time = session.last_disconnect_time = None
    init(session)
    outcome: list[object] = []
    for trigger in triggers:
        try:
            getattr(session.transitions, trigger)()
            outcome.append(session.transitions.state)
        except MachineError:
            outcome.append("refused")
        outcome.append((session.last_connect_time is not None, session.last_disconnect_time is not None))
        outcome.append(session.transitions.is_connected())
    return outcome


@pytest.mark.parametrize(
    "triggers", [seq for n in range(1, 5) for seq in itertools.product(("connect", "disconnect"), repeat=n)]
)
def test_session_states_match_amqtts_machine(triggers: tuple[str, ...]) -> None:
    assert run(lifecycle._init_states, triggers) == run(lifecycle.AMQTT_INIT_STATES, triggers)
