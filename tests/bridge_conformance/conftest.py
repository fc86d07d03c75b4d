"""Conformance suite for layerscope-bridge/1 agents (docs/bridge-protocol.md).

    pytest tests/bridge_conformance                               # the Python agent, started here
    pytest tests/bridge_conformance --agent HOST:PORT [--agent-token T]   # any agent (e.g. the iOS app)

By default the suite starts `python -m engine agent` as a real subprocess on a
free loopback port with a random token, and stops it afterwards.  The tests
speak the protocol with raw websockets and JSON (not engine.bridge.client), so
they check the wire format itself.
"""
from __future__ import annotations

import secrets
from typing import Optional

import pytest

from tests.bridge_conformance.bridge_wire import AgentHandle, Wire, start_agent_process, stop_agent_process


def pytest_addoption(parser):
    group = parser.getgroup("bridge conformance")
    group.addoption("--agent", default=None, metavar="HOST:PORT",
                    help="run the bridge conformance suite against this agent instead of a local Python agent")
    group.addoption("--agent-token", default=None, metavar="TOKEN", help="token of the --agent")


def _option(config, name: str) -> Optional[str]:
    try:
        return config.getoption(name)
    except ValueError:  # the option is registered only when this folder is given on the command line
        return None


@pytest.fixture(scope="session")
def agent(request, tmp_path_factory) -> AgentHandle:
    address = _option(request.config, "--agent")
    if address:
        address = address if "://" in address else f"ws://{address}"
        yield AgentHandle(address, _option(request.config, "--agent-token"))
        return
    # Small model and cache limits keep the archive and cache tests (section 12) quick.
    handle = start_agent_process(tmp_path_factory.mktemp("conformance"), token=secrets.token_hex(16),
                                 extra=("--max-model-mb", "64", "--cache-mb", "256"))
    yield handle
    stop_agent_process(handle)


@pytest.fixture
def wire(agent):
    """A connection that has said hello."""
    connection = Wire(agent.address)
    welcome = connection.hello(agent.token)
    assert welcome["type"] == "welcome", welcome
    connection.welcome = welcome
    yield connection
    connection.close()


@pytest.fixture
def connect(agent):
    """Factory of connections that have said hello; all closed at the end."""
    opened = []

    def make(hello: bool = True) -> Wire:
        connection = Wire(agent.address)
        opened.append(connection)
        if hello:
            welcome = connection.hello(agent.token)
            assert welcome["type"] == "welcome", welcome
            connection.welcome = welcome
        return connection

    yield make
    for connection in opened:
        connection.close()
