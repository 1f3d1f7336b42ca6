"""The profile summary of ``benchmarks/profile.py`` (py-spy's raw collapsed stacks)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tests.helpers.benchmod import load_benchmark

ROOT = Path(__file__).resolve().parent.parent


def load_profile_module():  # type: ignore[no-untyped-def]
    return load_benchmark("profile")


RAW = """\
<module> (x.py:1);main (x.py:2);run (a.py:3);epoll_pwait (libc.so.6) 50
<module> (x.py:1);main (x.py:2);run (a.py:3);do_handshake (ssl.py:9);ASN1_item_d2i_ex (libcrypto) 30
<module> (x.py:1);main (x.py:2);run (a.py:3);flush (c.py:5);write (libc.so.6) 15
<module> (x.py:1);main (x.py:2);run (a.py:3);0x7f00 (libcrypto.so.3) 5
"""


def test_summary_drops_idle_samples_and_loop_frames(tmp_path: Path) -> None:
    profile = load_profile_module()
    raw = tmp_path / "run0.txt"
    raw.write_text(RAW)
    total, own, incl = profile.summarise([raw, raw], top=5)
    assert total == 100  # 2 × (30 + 15 + 5); the 50 idle samples are not counted
    assert own[0] == ("ASN1_item_d2i_ex", 60)
    names = dict(incl)
    assert names["do_handshake"] == 60 and names["flush"] == 30
    assert "run" not in names and "0x7f00" not in names  # under every sample / unresolved
    args = argparse.Namespace(side="client", phase="concurrent", runs=2)
    text = profile.render(args, total, own, incl)
    assert "| 60.0% | `ASN1_item_d2i_ex` |" in text
    assert "100 busy samples" in text
