"""scripts/bench itself works: a tiny quick run yields a well-formed report.

No timing is asserted: figures depend on the machine. What must hold is the report's shape,
so a later full run can be trusted to produce every figure.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
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


# scripts/bench --check: the comparison with the committed budget and its exit code. The
# counting itself needs valgrind and a minute; here a stand-in supplies the counts.

sys.path.insert(0, str(ROOT / "scripts"))
import bench_check  # noqa: E402

VERSIONS = {"python": "3.11.7", "trio": "0.27.0"}


def _budget(path: Path, counts: dict[str, int], **extra: Any) -> Path:
    path.write_text(json.dumps({"tolerance": 0.03, "instructions_per_request": counts, **extra}))
    return path


def _check(path: Path, measured: dict[str, int], *, update: bool = False) -> tuple[int, str]:
    printed: list[str] = []
    code = bench_check.run_check(
        lambda: (measured, VERSIONS), update=update, budget_path=path, out=printed.append
    )
    return code, "\n".join(printed)


def test_check_passes_within_tolerance(tmp_path: Path) -> None:
    budget = _budget(tmp_path / "budget.json", {"chat": 1_000_000, "stream": 2_000_000})
    code, table = _check(budget, {"chat": 1_030_000, "stream": 1_900_000})
    assert code == 0
    assert "| chat | 1,030,000 | 1,000,000 | +3.0% | ok |" in table
    assert "| stream | 1,900,000 | 2,000,000 | -5.0% | ok |" in table
    assert "locks the gain in" in table  # 5% under budget: say how to keep it


def test_check_fails_past_tolerance(tmp_path: Path) -> None:
    budget = _budget(tmp_path / "budget.json", {"chat": 1_000_000, "stream": 2_000_000})
    code, table = _check(budget, {"chat": 1_031_000, "stream": 2_000_000})
    assert code == 1
    assert "| chat | 1,031,000 | 1,000,000 | +3.1% | OVER BUDGET |" in table
    assert "| stream | 2,000,000 | 2,000,000 | +0.0% | ok |" in table
    assert "scripts/bench --check --update" in table


def test_check_fails_a_case_without_budget(tmp_path: Path) -> None:
    budget = _budget(tmp_path / "budget.json", {"chat": 1_000_000})
    code, table = _check(budget, {"chat": 900_000, "new case": 5})
    assert code == 1
    assert "| new case | 5 | none | - | NO BUDGET |" in table
    code, _ = _check(tmp_path / "missing.json", {"chat": 900_000})
    assert code == 1


def test_check_reads_the_tolerance_from_the_budget(tmp_path: Path) -> None:
    budget = _budget(tmp_path / "budget.json", {"chat": 1_000_000})
    budget.write_text(budget.read_text().replace("0.03", "0.10"))
    assert _check(budget, {"chat": 1_090_000})[0] == 0
    assert _check(budget, {"chat": 1_110_000})[0] == 1


def test_a_case_may_have_a_tolerance_of_its_own(tmp_path: Path) -> None:
    """`tolerances` widens one case's tolerance (a count that follows another process's
    timing); the others keep the file's, and `--update` keeps both."""
    own = {"redis hit": 0.06}
    budget = _budget(
        tmp_path / "budget.json",
        {"chat": 1_000_000, "redis hit": 700_000},
        tolerances=own,
        tolerances_why="Redis's timing",
    )
    code, table = _check(budget, {"chat": 1_000_000, "redis hit": 740_000})
    assert code == 0 and "| redis hit | 740,000 | 700,000 | +5.7% | ok |" in table
    assert "(3%, 6%)" in table
    assert _check(budget, {"chat": 1_040_000, "redis hit": 700_000})[0] == 1
    assert _check(budget, {"chat": 1_000_000, "redis hit": 745_000})[0] == 1
    _check(budget, {"chat": 900_000, "redis hit": 650_000}, update=True)
    written = json.loads(budget.read_text())
    assert written["tolerances"] == own and written["tolerances_why"] == "Redis's timing"


def test_update_rewrites_the_budget_and_passes(tmp_path: Path) -> None:
    budget = _budget(tmp_path / "budget.json", {"chat": 1_000_000})
    code, printed = _check(budget, {"chat": 1_200_000, "stream": 7}, update=True)
    assert code == 0
    assert "OVER BUDGET" in printed  # what changed is still shown
    written = json.loads(budget.read_text())
    assert written["instructions_per_request"] == {"chat": 1_200_000, "stream": 7}
    assert written["tolerance"] == 0.03 and written["measured_with"] == VERSIONS
    assert "--update" in written["comment"] and "commit" in written["comment"]
    assert _check(budget, {"chat": 1_200_000, "stream": 7})[0] == 0


def test_check_notes_version_drift(tmp_path: Path) -> None:
    budget = _budget(
        tmp_path / "budget.json",
        {"chat": 1_000_000},
        measured_with={"python": "3.12.1", "trio": "0.27.0"},
    )
    code, printed = _check(budget, {"chat": 1_000_000})
    assert code == 0
    assert "python: budget measured with 3.12.1, now 3.11.7" in printed
    assert "trio:" not in printed


def test_committed_budget_covers_every_case() -> None:
    """The budget in the repo has a figure for each case the check counts."""
    budget = bench_check.load_budget(bench_check.BUDGET_PATH)
    assert set(budget["instructions_per_request"]) == {case.name for case in bench_check.CASES}
    assert all(count > 0 for count in budget["instructions_per_request"].values())
    assert budget["tolerance"] == 0.03 and "--update" in budget["comment"]
    assert set(budget.get("tolerances", {})) <= set(budget["instructions_per_request"])
    assert not budget.get("tolerances") or budget["tolerances_why"]  # a wider one says why


def test_percore_targets_are_ratios_to_portkey() -> None:
    """Scenario p's verdicts: req/s at least the target times Portkey's, CPU at most."""
    import bench_report

    assert bench_report.percore_verdict(800.0, 400.0, True, 2.0) == ("2.00x", "≥2x Portkey", "PASS")
    assert bench_report.percore_verdict(700.0, 400.0, True, 2.0)[2] == "FAIL"
    assert bench_report.percore_verdict(1.3, 1.31, False, 1.0) == ("0.99x", "≤1x Portkey", "PASS")
    assert bench_report.percore_verdict(1.4, 1.31, False, 1.0)[2] == "FAIL"
    assert bench_report.percore_verdict(1.0, None, True, 2.0) == ("-", "n/a", "")
    assert bench_report.percore_verdict(1.0, 2.0, False, None) == ("0.50x", "", "")


# scripts/bench_pair.py: its figures are read from /proc and /metrics and set side by side.


def test_cpu_time_splits_user_from_system() -> None:
    """utime + cutime and stime + cstime, counted after the command's closing parenthesis
    (a command may hold spaces and parentheses)."""
    from bench_systems import stat_ticks

    stat = "4242 (trigate (w) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 700 80 5 3 20 0 3 0 9"
    assert stat_ticks(stat) == (705, 83)


def test_pair_counts_only_the_asked_samples() -> None:
    """The tally that shows every measured request met the filter: its hook's samples of
    its guardrail, whatever their status, and none of another's or another hook's."""
    import bench_pair

    guardrail = "litellm_guardrail_requests_total"
    metrics = "\n".join([
        f"# HELP {guardrail} Total number of guardrail invocations",
        f"# TYPE {guardrail} counter",
        guardrail + '{guardrail_name="cf",hook_type="pre_call",status="success"} 40.0',
        guardrail + '{guardrail_name="cf",hook_type="pre_call",status="blocked"} 2.0',
        guardrail + '{guardrail_name="cf",hook_type="post_call",status="success"} 40.0',
        guardrail + '{guardrail_name="other",hook_type="pre_call",status="success"} 7.0',
        "litellm_cache_hits_metric_total 12.0",
        "litellm_cache_hits_metric_created 1.7e9",
    ])  # fmt: skip
    guard = bench_pair.PAIRS["guard"].tally
    assert bench_pair.sample_sum(metrics, guard) == 42.0
    assert bench_pair.sample_sum(metrics, bench_pair.PAIRS["hit"].tally) == 12.0


def test_pair_compares_means_and_rounds() -> None:
    """The ratio and difference are of the means; their ranges and medians are round by
    round (a disturbed round moves the median least)."""
    import bench_pair

    compared = bench_pair.compare([1.0, 2.0, 1.0], [0.5, 1.2, 0.9])
    assert compared["ratio"] == pytest.approx(2.6 / 4)
    ratios = (compared["ratio_min"], compared["ratio_median"], compared["ratio_max"])
    assert ratios == pytest.approx((0.5, 0.6, 0.9))
    assert compared["difference_ms"] == pytest.approx(-1.4 / 3)
    differences = [compared[f"difference_ms_{key}"] for key in ("min", "median", "max")]
    assert differences == pytest.approx([-0.8, -0.5, -0.1])
    assert compared["difference_fraction"] == pytest.approx(-1.4 / 4)
