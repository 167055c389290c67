"""Turning bench results into the markdown report, its pass/fail targets and the PNG plot."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Values = dict[str, float | None]


@dataclass(frozen=True)
class Row:
    """One figure of the report, for every system measured, with its target if it has one."""

    scenario: str
    metric: str
    values: Values
    higher_is_better: bool
    target: str = ""
    passed: bool | None = None

    def advantage(self) -> float | None:
        """How many times better trigate is than LiteLLM on this figure, where that means."""
        mine, theirs = self.values.get("trigate"), self.values.get("litellm")
        if mine is None or theirs is None or mine <= 0 or theirs <= 0:
            return None
        return mine / theirs if self.higher_is_better else theirs / mine


def dig(data: Any, *path: str | int) -> float | None:
    """data[path...] if every step exists, else None (a scenario may not have run)."""
    for step in path:
        try:
            data = data[step]
        except (KeyError, IndexError, TypeError):
            return None
    return float(data) if isinstance(data, int | float) else None


class _Rows:
    """Collects rows; each row reads one path from every system's results."""

    def __init__(self, systems: dict[str, Any]) -> None:
        self.systems = systems
        self.rows: list[Row] = []

    def add(
        self,
        scenario: str,
        metric: str,
        path: tuple[str | int, ...],
        *,
        higher: bool = False,
        target: str = "",
        check: Callable[[Values], bool | None] | None = None,
    ) -> None:
        values = {name: dig(result, *path) for name, result in self.systems.items()}
        if all(value is None for value in values.values()):
            return
        passed = check(values) if check and values.get("trigate") is not None else None
        self.rows.append(Row(scenario, metric, values, higher, target, passed))


def _at_most(limit: float) -> Callable[[Values], bool | None]:
    return lambda values: (values["trigate"] or 0.0) <= limit


def _at_least(limit: float) -> Callable[[Values], bool | None]:
    return lambda values: (values["trigate"] or 0.0) >= limit


def _ten_times_litellm(values: Values) -> bool | None:
    theirs = values.get("litellm")
    if theirs is None:
        return None
    return (values["trigate"] or 0.0) >= 10 * theirs


def build_rows(systems: dict[str, Any], levels: tuple[int, ...], slow_streams: int) -> list[Row]:
    """Every report row, in scenario order, with targets checked on trigate's figures."""
    rows = _Rows(systems)
    for i, level in enumerate(levels):
        rows.add("a", f"c={level} req/s", ("a", "levels", i, "rps"), higher=True)
        for q in ("p50", "p90", "p99"):
            rows.add("a", f"c={level} {q} ms", ("a", "levels", i, f"{q}_ms"))
    rows.add(
        "a",
        "max req/s",
        ("a", "max_rps"),
        higher=True,
        target="≥10x LiteLLM",
        check=_ten_times_litellm,
    )
    rows.add("b", "offered req/s (½ max)", ("b", "rate_rps"), higher=True)
    rows.add("b", "p50 ms via gateway", ("b", "gateway", "p50_ms"))
    rows.add("b", "p50 ms direct to mock", ("b", "direct", "p50_ms"))
    rows.add("b", "added p50 ms", ("b", "added_p50_ms"), target="≤1 ms", check=_at_most(1.0))
    rows.add("b", "added p99 ms", ("b", "added_p99_ms"))
    rows.add("b", "hypercorn alone: added p50 ms", ("b", "floor", "added_p50_ms"))
    rows.add("b", "hypercorn alone: added p99 ms", ("b", "floor", "added_p99_ms"))
    rows.add("b", "self-reported overhead p50 ms", ("b", "gateway", "reported_overhead_p50_ms"))
    rows.add("b", "self-reported overhead p99 ms", ("b", "gateway", "reported_overhead_p99_ms"))
    rows.add("c", "added TTFB p50 ms", ("c", "added_ttfb_p50_ms"))
    rows.add("c", "added TTFB p99 ms", ("c", "added_ttfb_p99_ms"))
    rows.add("c", "relayed chunks/s", ("c", "fast", "chunks_per_s"), higher=True)
    rows.add(
        "c",
        "relayed chunks/s per worker",
        ("c", "fast", "chunks_per_s_per_worker"),
        higher=True,
        target="≥30,000",
        check=_at_least(30_000),
    )
    rows.add(
        "c",
        f"slow streams completed (of {slow_streams})",
        ("c", "slow", "completed"),
        higher=True,
        target=f"={slow_streams}",
        check=_at_least(slow_streams),
    )
    rows.add("c", "slow stream ideal ms", ("c", "slow", "ideal_ms"))
    rows.add("c", "slow stream total p50 ms", ("c", "slow", "total_p50_ms"))
    rows.add("c", "slow stream total p99 ms", ("c", "slow", "total_p99_ms"))
    rows.add("c", "slow stream TTFB p99 ms", ("c", "slow", "ttfb_p99_ms"))
    rows.add(
        "c",
        "worker peak RSS MB (streams held)",
        ("c", "slow", "peak_rss_mb"),
        target="<300 MB",
        check=_at_most(300.0),
    )
    rows.add("d", "req/s, 1 worker", ("d", "rps_1_worker"), higher=True)
    rows.add("d", "req/s, 2 workers", ("d", "rps_2_workers"), higher=True)
    rows.add(
        "d",
        "2 workers ÷ 1 worker",
        ("d", "speedup"),
        higher=True,
        target="≥1.7x",
        check=_at_least(1.7),
    )
    rows.add("i", "instructions per request (millions)", ("i", "instructions_per_request_m"))
    rows.add("r", "chat completions req/s (c=32)", ("r", "chat_rps"), higher=True)
    rows.add("r", "Responses API req/s (c=32)", ("r", "responses_rps"), higher=True)
    rows.add(
        "r",
        "Responses ÷ chat, req/s",
        ("r", "rps_ratio"),
        higher=True,
        target="≥0.8",
        check=_at_least(0.8),
    )
    rows.add("r", "chat short streams/s", ("r", "chat_streams_per_s"), higher=True)
    rows.add("r", "Responses short streams/s", ("r", "responses_streams_per_s"), higher=True)
    rows.add(
        "r",
        "Responses ÷ chat, streams/s",
        ("r", "streams_ratio"),
        higher=True,
        target="≥0.8",
        check=_at_least(0.8),
    )
    return rows.rows


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"


def _verdict(passed: bool | None, target: str = "") -> str:
    if passed is None:
        return "n/a" if target else ""
    return "PASS" if passed else "FAIL"


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def results_table(rows: list[Row], systems: list[str]) -> str:
    """The main table: one column per system, LiteLLM ratio when compared, target, verdict."""
    compare = "litellm" in systems
    header = ["scenario", "metric", *systems]
    if compare:
        header.append("trigate x better")
    header += ["target", "pass/fail"]
    lines = []
    for row in rows:
        line = [row.scenario, row.metric, *(_fmt(row.values.get(name)) for name in systems)]
        if compare:
            advantage = row.advantage()
            line.append("-" if advantage is None else f"{advantage:.1f}x")
        line += [row.target, _verdict(row.passed, row.target)]
        lines.append(line)
    return _table(header, lines)


def ceilings_table(ceilings: dict[str, float], systems: dict[str, Any]) -> tuple[str, bool]:
    """Can the mock and the generators outrun what they drove? Returns (table, all passed)."""

    def most(*path: str | int) -> float:
        found = [dig(result, *path) for result in systems.values()]
        return max((value for value in found if value is not None), default=0.0)

    gateway_max = max(most("a", "max_rps"), most("d", "rps_2_workers"))
    chunks = most("c", "fast", "chunks_per_s")
    offered = max(
        (
            point["offered_rps"]
            for result in systems.values()
            for point in result.get("b", {}).get("sweep", [])
        ),
        default=0.0,
    )
    checks = [
        (
            "mock (nginx + Lua), non-stream, wrk -t2 -c64",
            ceilings["mock_wrk_rps"],
            "req/s",
            3 * gateway_max,
            "≥3x best gateway req/s",
        ),
        (
            "mock, fast stream, wrk -t2",
            ceilings["mock_stream_chunks_per_s"],
            "chunks/s",
            3 * chunks,
            "≥3x best relayed chunks/s",
        ),
        (
            "wrk → bare mock (same run as the first row)",
            ceilings["mock_wrk_rps"],
            "req/s",
            gateway_max,
            "≥ best gateway req/s",
        ),
        (
            "stream client → bare mock, fast streams",
            ceilings["client_stream_chunks_per_s"],
            "chunks/s",
            chunks,
            "≥ best relayed chunks/s",
        ),
        (
            "open-loop client → bare mock",
            ceilings["client_open_loop_rps"],
            "req/s",
            offered,
            "≥ highest offered rate",
        ),
    ]
    lines = [
        [
            what,
            f"{_fmt(value)} {unit}",
            f"{need} ({_fmt(needed)})" if needed else "not measured",
            _verdict(value >= needed if needed else None),
        ]
        for what, value, unit, needed, need in checks
    ]
    table = _table(["what", "ceiling", "needed", "ok"], lines)
    return table, all(value >= needed for _, value, _, needed, _ in checks)


def problems(systems: dict[str, Any]) -> list[str]:
    """Every measurement that saw errors or malformed streams: figures next to them are suspect."""
    found: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            found.extend(
                f"{where}: {key} = {node[key]}"
                for key in ("errors", "frames_wrong")
                if node.get(key)
            )
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    for name, result in systems.items():
        walk(result, name)
    return found


def plot(systems: dict[str, Any], path: Path) -> bool:
    """Latency against offered load, one colour per system (p50 solid, p99 dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = False
    for name, result in systems.items():
        points = sorted(result.get("b", {}).get("sweep", []), key=lambda p: p["offered_rps"])
        if not points:
            continue
        x = [p["offered_rps"] for p in points]
        (line,) = ax.plot(x, [p["p50_ms"] for p in points], marker="o", label=f"{name} p50")
        ax.plot(
            x,
            [p["p99_ms"] for p in points],
            marker="x",
            linestyle="--",
            color=line.get_color(),
            label=f"{name} p99",
        )
        drawn = True
    if drawn:
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="offered load (req/s, open loop)",
            ylabel="latency (ms, from schedule)",
            title="Non-stream chat latency against offered load",
        )
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return drawn


# Scenario p: per core against the peers, and the targets trigate holds against Portkey.
PERCORE_NAMES = {
    "trigate": "trigate",
    "portkey": "Portkey",
    "litellm": "LiteLLM",
    "hypercorn": "hypercorn alone",
}
# (kind, figure, higher is better, target as a ratio to Portkey's figure) for each row.
# Where other work shares the pinned core, req/s falls with the share the system gets;
# requests per CPU-second (1 / CPU time per request) is what a core of its own would serve.
PERCORE_ROWS: tuple[tuple[str, str, bool, float | None], ...] = (
    ("chat", "cpu_ms_per_request", False, None),
    ("chat", "per_cpu_second", True, 2.0),
    ("chat", "rps", True, 2.0),
    ("chat", "core_busy", True, None),
    ("burst stream", "cpu_ms_per_request", False, None),
    ("burst stream", "per_cpu_second", True, 1.5),
    ("burst stream", "rps", True, 1.5),
    ("burst stream", "core_busy", True, None),
    ("paced stream", "cpu_ms_per_request", False, 1.0),
    ("paced stream", "rps", True, None),
    ("paced stream", "core_busy", True, None),
)
FIGURES = {
    "cpu_ms_per_request": "CPU-ms per {unit}",
    "per_cpu_second": "{unit}s per CPU-second",
    "rps": "{unit}s/s",
    "core_busy": "share of its core used",
}


def _percore_cell(figures: dict[str, Any] | None, key: str) -> str:
    """Mean over the rounds, with the range when the rounds differ visibly."""
    if not figures:
        return "-"
    mean, low, high = figures[key], figures[f"{key}_min"], figures[f"{key}_max"]
    if high - low < 0.01 * mean:
        return _fmt(mean)
    return f"{_fmt(mean)} ({_fmt(low)} to {_fmt(high)})"


def percore_verdict(
    trigate: float | None, portkey: float | None, higher: bool, target: float | None
) -> tuple[str, str, str]:
    """(trigate ÷ Portkey, the target, PASS/FAIL) for one row; blanks where not measured."""
    if trigate is None or portkey is None or portkey <= 0:
        return "-", "" if target is None else "n/a", ""
    ratio = trigate / portkey
    if target is None:
        return f"{ratio:.2f}x", "", ""
    goal = f"≥{target:g}x Portkey" if higher else f"≤{target:g}x Portkey"
    passed = ratio >= target if higher else ratio <= target
    return f"{ratio:.2f}x", goal, "PASS" if passed else "FAIL"


def percore_table(percore: dict[str, Any]) -> str:
    """One row per kind and figure; a column per system; the ratio to Portkey and target."""
    systems = [name for name in PERCORE_NAMES if name in percore["systems"]]
    versions = percore["versions"]
    header = ["requests", "figure"]
    header += [f"{PERCORE_NAMES[name]} ({versions[name]})" for name in systems]
    header += ["trigate ÷ Portkey", "target", "pass/fail"]
    lines = []
    for kind, key, higher, target in PERCORE_ROWS:
        unit = percore["kinds"][kind]["unit"]
        figure = FIGURES[key].format(unit=unit)
        cells = [_percore_cell(percore["systems"][name].get(kind), key) for name in systems]
        mine = dig(percore["systems"], "trigate", kind, key)
        theirs = dig(percore["systems"], "portkey", kind, key)
        verdict = (
            ("", "", "") if key == "core_busy" else percore_verdict(mine, theirs, higher, target)
        )
        lines.append([kind, figure, *cells, *verdict])
    return _table(header, lines)


def percore_problems(percore: dict[str, Any]) -> list[str]:
    """Wrong answers and errors in scenario p: the figures beside them are suspect."""
    found = []
    for system, kinds in percore["answers"].items():
        for kind, answer in kinds.items():
            if not answer["ok"] or answer["frames"] != answer["frames_expected"]:
                found.append(f"{system} {kind}: answered {answer}")
    for system, kinds in percore["systems"].items():
        found.extend(
            f"{system} {kind}: {figures['errors']} wrk errors"
            for kind, figures in kinds.items()
            if figures["errors"]
        )
    return found
