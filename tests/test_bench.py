"""scripts/bench itself works: a tiny quick run yields a well-formed report.

No timing is asserted: figures depend on the machine. What must hold is the report's shape,
so a later full run can be trusted to produce every figure.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _run_tiny_bench(out: Path) -> subprocess.CompletedProcess[str]:
    """Scenarios a and b (b brings the open-loop sweep, hence the plot) at 1 s per step."""
    argv = [str(ROOT / "scripts" / "bench"), "--quick", "--scenarios", "ab", "--duration", "1"]
    return subprocess.run(
        [*argv, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    if shutil.which("wrk") is None and shutil.which("apt-get") is None:
        pytest.skip("needs wrk and nginx, or apt-get to install them")
    out = tmp_path_factory.mktemp("bench")
    done = _run_tiny_bench(out)
    assert done.returncode == 0, done.stderr[-4000:]
    [json_path] = out.glob("bench-*.json")
    return done.stdout, json.loads(json_path.read_text())


def test_json_has_every_section(tiny_run: tuple[str, dict[str, Any]]) -> None:
    _, data = tiny_run
    assert {"meta", "plan", "ceilings", "systems", "rows", "markdown", "json", "png"} <= set(data)
    assert data["plan"]["scenarios"] == "ab"
    assert set(data["systems"]) == {"trigate"}


def test_ceilings_are_positive_numbers(tiny_run: tuple[str, dict[str, Any]]) -> None:
    _, data = tiny_run
    assert set(data["ceilings"]) == {
        "mock_wrk_rps",
        "mock_wrk_p99_ms",
        "mock_stream_chunks_per_s",
        "client_open_loop_rps",
        "client_stream_chunks_per_s",
    }
    assert all(_numeric(value) and value > 0 for value in data["ceilings"].values())


def test_scenario_figures_are_numeric(tiny_run: tuple[str, dict[str, Any]]) -> None:
    _, data = tiny_run
    trigate = data["systems"]["trigate"]
    levels = trigate["a"]["levels"]
    assert [level["concurrency"] for level in levels] == [1, 32]
    for level in levels:
        for key in ("rps", "p50_ms", "p90_ms", "p99_ms", "errors"):
            assert _numeric(level[key]), (key, level)
    assert trigate["a"]["max_rps"] > 0
    b = trigate["b"]
    for key in ("rate_rps", "added_p50_ms", "added_p99_ms"):
        assert _numeric(b[key]), key
    for side in ("gateway", "direct"):
        assert _numeric(b[side]["p50_ms"]) and _numeric(b[side]["p99_ms"])
    floor = b["floor"]  # hypercorn alone, at the same rate
    assert floor["offered_rps"] == b["rate_rps"] and floor["requests"] > 0
    assert floor["errors"] == 0 and _numeric(floor["added_p50_ms"])
    assert [point["offered_rps"] for point in b["sweep"]] == pytest.approx(
        [0.5 * trigate["a"]["max_rps"], trigate["a"]["max_rps"]]
    )


def test_rows_carry_targets(tiny_run: tuple[str, dict[str, Any]]) -> None:
    _, data = tiny_run
    rows = {row["metric"]: row for row in data["rows"]}
    assert rows["added p50 ms"]["target"] == "≤1 ms"
    assert rows["added p50 ms"]["passed"] in (True, False)
    assert rows["max req/s"]["passed"] is None  # needs --compare litellm
    assert all(_numeric(row["values"]["trigate"]) for row in data["rows"])


def test_markdown_table_is_printed(tiny_run: tuple[str, dict[str, Any]]) -> None:
    stdout, data = tiny_run
    assert stdout == data["markdown"]
    assert "| scenario | metric | trigate | target | pass/fail |" in stdout
    assert "| what | ceiling | needed | ok |" in stdout
    assert data["json"] in stdout


def test_plot_is_a_png(tiny_run: tuple[str, dict[str, Any]]) -> None:
    _, data = tiny_run
    png = Path(data["png"])
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_instructions_are_counted(tmp_path: Path) -> None:
    """(i): the gateway under callgrind, its instructions divided by the requests served."""
    if shutil.which("valgrind") is None:
        pytest.skip("needs valgrind")
    argv = [str(ROOT / "scripts" / "bench"), "--quick", "--scenarios", "i", "--duration", "1"]
    done = subprocess.run(
        [*argv, "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    [json_path] = tmp_path.glob("bench-*.json")
    counted = json.loads(json_path.read_text())["systems"]["trigate"]["i"]
    assert counted["requests"] > 0 and counted["errors"] == 0
    assert counted["instructions"] > 0 and _numeric(counted["instructions_per_request_m"])
    assert "| i | instructions per request (millions) |" in done.stdout
