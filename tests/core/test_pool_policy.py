from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from anytls.core.pool_policy import PoolPolicy, SessionInfo, normalise_interval


def test_intervals_of_five_seconds_or_less_mean_thirty() -> None:
    assert normalise_interval(5) == 30
    assert normalise_interval(0) == 30
    assert normalise_interval(6) == 6


def test_choose_newest_idle_session_go_style() -> None:
    policy = PoolPolicy()
    sessions = [SessionInfo(1, 0, 10.0), SessionInfo(3, 1, None), SessionInfo(2, 0, 12.0)]
    assert policy.choose(sessions) == 2  # 3 is busy: one stream per session
    assert policy.choose([SessionInfo(1, 1, None)]) is None
    assert policy.choose([SessionInfo(4, 0, 1.0, usable=False)]) is None


def test_choose_with_stream_cap() -> None:
    policy = PoolPolicy(max_streams=8)
    sessions = [SessionInfo(1, 3, None), SessionInfo(2, 8, None)]
    assert policy.choose(sessions) == 1


def test_expire_keeps_fresh_and_min_idle_newest() -> None:
    policy = PoolPolicy(idle_timeout=30, min_idle=2)
    sessions = [SessionInfo(seq, 0, 0.0) for seq in range(1, 6)]
    sessions.append(SessionInfo(6, 0, 95.0))  # fresh
    sessions.append(SessionInfo(7, 1, None))  # busy: never touched
    close, refresh = policy.expire(sessions, now=100.0)
    assert refresh == [5]  # fresh 6 counts as kept, so only one expired one is kept
    assert close == [4, 3, 2, 1]


def test_expire_without_min_idle_closes_all_expired() -> None:
    policy = PoolPolicy(idle_timeout=30)
    close, refresh = policy.expire([SessionInfo(1, 0, 0.0), SessionInfo(2, 0, 80.0)], 100.0)
    assert (close, refresh) == ([1], [])


@given(
    st.lists(st.tuples(st.integers(0, 3), st.floats(0, 200)), max_size=20),
    st.integers(0, 5),
)
def test_expire_never_drops_below_min_idle(items: list[tuple[int, float]], min_idle: int) -> None:
    policy = PoolPolicy(idle_timeout=30, min_idle=min_idle)
    sessions = [
        SessionInfo(i, streams, since if streams == 0 else None)
        for i, (streams, since) in enumerate(items)
    ]
    close, refresh = policy.expire(sessions, now=200.0)
    idle = [s for s in sessions if s.streams == 0]
    assert len(idle) - len(close) >= min(min_idle, len(idle))
    assert not set(close) & set(refresh)
    # closed sessions are always older than every kept expired one
    if close and refresh:
        assert max(close) < min(refresh)


def test_join_go_style_never_shares_a_handshake() -> None:
    policy = PoolPolicy(max_handshakes=0)
    assert policy.join([]) is None
    assert policy.join([1, 1, 1]) is None
    assert policy.join([1] * 500) is None


def test_join_within_stream_cap_takes_newest_handshake_with_room() -> None:
    policy = PoolPolicy(max_streams=3, max_handshakes=0)
    assert policy.join([1, 2]) == 1
    assert policy.join([2, 3]) == 0
    assert policy.join([3, 3]) is None


def test_join_below_the_handshake_cap_starts_a_session() -> None:
    policy = PoolPolicy(max_handshakes=4)
    assert policy.join([]) is None
    assert policy.join([1, 1, 1]) is None
    # One nobody waits for any more (they gave up) is taken, the newest first: it is a
    # session on its way with room for a stream.
    assert policy.join([1, 0, 0]) == 2


def test_join_at_the_handshake_cap_takes_fewest_waiting_oldest_first() -> None:
    policy = PoolPolicy(max_handshakes=3)
    assert policy.join([1, 1, 1]) == 0
    assert policy.join([2, 1, 1]) == 1
    assert policy.join([2, 2, 1]) == 2
    assert policy.join([5, 9, 2, 2]) == 2  # (above the cap: a cap lowered by a reload)


@given(st.lists(st.integers(0, 50), min_size=1, max_size=20), st.integers(1, 20))
def test_join_at_the_cap_picks_the_first_least_waited_for(claims: list[int], cap: int) -> None:
    policy = PoolPolicy(max_handshakes=cap)
    index = policy.join(claims)
    if len(claims) < cap:  # below the cap: only a session with room (max_streams=1)
        free = [i for i, c in enumerate(claims) if c == 0]
        assert index == (free[-1] if free else None)
    else:
        assert index == claims.index(min(claims))


@given(st.lists(st.integers(0, 5), min_size=1, max_size=20), st.integers(1, 200))
def test_join_spreads_a_burst_evenly(claims: list[int], streams: int) -> None:
    """Streams joining one at a time at the cap end with counts within one of each
    other, once the burst has levelled what was waiting before."""
    policy = PoolPolicy(max_handshakes=1)
    waiting = list(claims)
    for _ in range(streams):
        index = policy.join(waiting)
        assert index is not None
        assert waiting[index] == min(waiting)
        waiting[index] += 1
    if streams >= sum(max(claims) - c for c in claims):
        assert max(waiting) - min(waiting) <= 1
