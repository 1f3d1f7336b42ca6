"""``benchmarks/plot.py`` (and ``bench.py --plot``'s data): PNG charts from a results file,
drawn here from small synthetic results, without running the benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench  # noqa: E402
import plot  # noqa: E402

PAIRS = [name for name, _, _ in bench.PAIRS]


def synthetic() -> dict[str, object]:
    medians = {
        name: {m.key: 10.0 * (i + 1) + j for j, m in enumerate(bench.METRICS)}
        for i, name in enumerate(PAIRS)
    }
    del medians["ours:ours-workers"]["udp_dps"]  # a figure one pair lacks
    links = {
        name: {"down_MBps": 40.0 - i, "latency_p50_ms": 51.0 + i}
        for i, name in enumerate(PAIRS[:4])
    }
    return {
        "title": "synthetic",
        "date": "2026-01-01 00:00 UTC",
        "tables": [
            bench.table_data("loopback", "all pairs on loopback", medians, bench.QUICK),
            {
                "name": "Emulated link: 50 ms RTT",
                "title": "over an emulated 50 ms link",
                "reference": "sing-box:sing-box",
                "pairs": PAIRS[:4],
                "metrics": [
                    {"key": "down_MBps", "label": "download MB/s", "better": "higher"},
                    {"key": "latency_p50_ms", "label": "open p50 ms", "better": "lower"},
                ],
                "medians": links,
            },
        ],
    }


def check_png(path: Path, min_size: tuple[int, int]) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], image.size
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 20  # something was drawn


def test_plot_from_json_file(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(synthetic()))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "plot.py"), str(results), "--out-dir",
         str(tmp_path / "png")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    main, link = (
        tmp_path / "png" / "bench-loopback.png",
        tmp_path / "png" / "bench-emulated-link-50-ms-rtt.png",
    )
    assert proc.stdout.split() == [str(main), str(link)]
    check_png(main, (1000, 1000))  # 18 metrics: a 3 × 6 grid
    check_png(link, (400, 200))


def test_plot_from_results_markdown(tmp_path: Path) -> None:
    # an older results.md: the raw runs in its "every run" block are enough
    raw = {name: [{"down_MBps": 100.0 + i, "up_MBps": 90.0}, {"down_MBps": 300.0 + i}]
           for i, name in enumerate(PAIRS)}  # fmt: skip
    md = tmp_path / "results.md"
    md.write_text(f"# anytls benchmark results\n\n- date: 2026-01-02 03:04 UTC; x\n\n```json\n"
                  f"{json.dumps(raw)}\n```\n")  # fmt: skip
    results = plot.load_results(md)
    (table,) = results["tables"]
    assert results["date"] == "2026-01-02 03:04 UTC"
    assert table["medians"]["ours:ours"]["down_MBps"] == 200.0  # median of 100 and 300
    (png,) = plot.plot(results, tmp_path)
    check_png(png, (300, 200))
