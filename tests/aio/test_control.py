"""The parent-to-worker commands (``anytls.aio.control``) and refused users' logins."""

from __future__ import annotations

import asyncio
import logging

import pytest

from anytls.aio.control import handle_command
from anytls.aio.limits import UserPolicy
from anytls.aio.server import AnyTLSServer, ServerConfig, serve
from tests.helpers.aio import async_test
from tests.helpers.rawclient import raw_session

BOB = UserPolicy(speed_limit=8.0, device_limit=1)


async def _server(**kw: object) -> AnyTLSServer:
    return await serve(ServerConfig(**kw), "127.0.0.1", 0)  # type: ignore[arg-type]


async def _refused_at_once(port: int, password: str, source: str = "127.0.0.1") -> None:
    """A login the server ends without a byte."""
    reader, writer = await raw_session(port, source, password)
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


@async_test(timeout=20)
async def test_a_users_command_without_limits_keeps_the_running_limits() -> None:
    # The quota keeper sends the users alone: per-user speed and device limits must stay.
    server = await _server(users={"bob": "b", "carol": "c"}, limits={"bob": BOB})
    try:
        assert handle_command(server, {"op": "users", "users": {"bob": "b"}}) is True
        assert dict(server.config.users) == {"bob": "b"}
        assert server.config.limits == {"bob": BOB}
        assert server.limiter.policy("bob") == BOB
        # limits given (even none) replace them
        handle_command(server, {"op": "users", "users": {"bob": "b"}, "limits": {}})
        assert server.config.limits == {} and server.limiter.policy("bob") != BOB
    finally:
        await server.close()


@async_test(timeout=20)
async def test_a_refused_user_is_logged_with_the_reason_and_not_counted_as_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "anytls.server")
    server = await _server(users={"alice": "a"}, auth_fail_limit=2)
    port = server.sockets[0].getsockname()[1]
    try:
        handle_command(
            server,
            {
                "op": "users",
                "users": {"alice": "a"},
                "refused": {"bob": ["b", "used 5000 of its quota of 3000 bytes"]},
            },
        )
        for _ in range(3):  # more than --auth-fail-limit: none of them counts
            await _refused_at_once(port, "b")
        assert "user bob is refused: used 5000 of its quota of 3000 bytes" in caplog.text
        assert "wrong password" not in caplog.text
        assert "failed to authenticate" not in caplog.text
        # the address is not locked out: alice, from the same address, gets in
        reader, writer = await raw_session(port, "127.0.0.1", "a")
        try:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.3)  # open, nothing to say
        finally:
            writer.close()
        # A wrong password is still one, and counts.
        await _refused_at_once(port, "nope")
        assert "wrong password" in caplog.text
        # bob allowed again (an empty table given): his login now works
        handle_command(server, {"op": "users", "users": {"alice": "a", "bob": "b"}, "refused": {}})
        assert server.refused_table == {}
        reader, writer = await raw_session(port, "127.0.0.1", "b")
        try:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.3)
        finally:
            writer.close()
    finally:
        await server.close()
