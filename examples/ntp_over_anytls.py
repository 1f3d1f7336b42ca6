"""Ask an NTP server for the time through an AnyTLS server: ``anytls.open_udp``.

    python ntp_over_anytls.py 'anytls://password@your.server:8443/?pinSHA256=…' pool.ntp.org

The request leaves from the AnyTLS server (UDP over TCP inside the tunnel): the NTP server
sees the AnyTLS server's address.
"""

from __future__ import annotations

import asyncio
import struct
import sys
from datetime import UTC, datetime, timedelta

import anytls
from anytls.contrib import config_from_uri

NTP_EPOCH = datetime(1900, 1, 1, tzinfo=UTC)


async def ntp_time(link: str, server: str, port: int = 123) -> datetime:
    """The time ``server`` says it is, asked through the AnyTLS server at ``link``."""
    async with (
        anytls.Client(config_from_uri(link)) as client,
        # connect=: every datagram goes to this one target (a name is resolved by the server)
        await anytls.open_udp(client, connect=(server, port)) as udp,
    ):
        udp.send(b"\x23" + bytes(47))  # NTP v4, mode 3 (client)
        async with asyncio.timeout(5):
            answer = await udp.recv()
    seconds, fraction = struct.unpack("!II", answer[40:48])  # the transmit timestamp
    return NTP_EPOCH + timedelta(seconds=seconds + fraction / 2**32)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)  # the usage, on stderr
    link, server = sys.argv[1:3]
    print(asyncio.run(ntp_time(link, server)).isoformat())
