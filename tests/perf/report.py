"""The bench's table (markdown, also printed) and plots (PNG, matplotlib)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _num(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"


def _spread(values: dict[str, float] | None) -> str:
    if not values:
        return "-"
    return f"{_num(values['median'])} ({_num(values['min'])}-{_num(values['max'])})"


def _extra(name: str, scenario: dict[str, Any]) -> str:
    if name == "B1":
        return f"p99 at half of max: {_spread(scenario['p99_at_half_ms'])} ms"
    if name == "B2":
        return f"duplicate message rows: {scenario['duplicate_messages']}"
    if name == "B3":
        checks = scenario["checks"]
        return (
            f"capacity violations: {checks['capacity_violations']}; double owners: "
            f"{checks['double_owners']}; owner mismatches: {checks['owner_mismatches']}; "
            f"assigned {checks['assigned']}, queued {checks['queued']}"
        )
    if name == "B4":
        return (
            f"p50: {_spread(scenario['p50_ms'])} ms; frames missing: {scenario['frames_missing']}"
        )
    if name == "B5":
        ours, theirs = scenario["runs"][0], scenario["raw_runs"][0]
        return (
            f"memory/connection: {_num(ours['kib_per_connection'])} KiB vs "
            f"{_num(theirs['kib_per_connection'])} KiB (x{_num(scenario['memory_ratio'])}); "
            f"frames missing: {scenario['frames_missing']}"
        )
    return ""


def table(report: dict[str, Any]) -> str:
    lines = [
        "| # | scenario | omniroute, median (min-max) | baseline, median (min-max) | ratio "
        "| target | holds | also |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, scenario in report["scenarios"].items():
        if "error" in scenario:
            lines.append(f"| {name} | failed: {scenario['error']} | | | | | no | |")
            continue
        unit = scenario["unit"]
        lines.append(
            f"| {name} | {scenario['scenario']} | {_spread(scenario['value'])} {unit} "
            f"| {_spread(scenario['baseline'])} {unit} ({scenario['baseline_name']}) "
            f"| {scenario['ratio']:.2f} | {scenario['target']} "
            f"| {'yes' if scenario['holds'] else '**no**'} | {_extra(name, scenario)} |"
        )
    return "\n".join(lines)


def plots(report: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    b1 = report["scenarios"].get("B1", {})
    if "sweep" in b1:
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        for name, points in b1["sweep"].items():
            offered = [p["offered_rps"] for p in points]
            left.plot(offered, [p["throughput_rps"] for p in points], marker="o", label=name)
            for q, style in (("p50_ms", ":"), ("p99_ms", "-")):
                right.plot(
                    offered, [p[q] for p in points], style, marker="o", label=f"{name} {q[:3]}"
                )
        left.set(xlabel="offered load (req/s)", ylabel="answered (req/s)", title="B1 throughput")
        right.set(
            xlabel="offered load (req/s)",
            ylabel="latency from scheduled send (ms)",
            title="B1 latency (open loop)",
            yscale="log",
        )
        left.legend()
        right.legend()
        figure.tight_layout()
        figure.savefig(out / "b1_ingest.png", dpi=110)
        plt.close(figure)
        written.append("b1_ingest.png")
    bars = [
        (name, s["value"]["median"], s["baseline"]["median"], s["unit"])
        for name, s in report["scenarios"].items()
        if "error" not in s and name in ("B2", "B3", "B5", "B6")
    ]
    if bars:
        figure, axes = plt.subplots(1, len(bars), figsize=(3.2 * len(bars), 3.6))
        for axis, (name, ours, theirs, unit) in zip(
            axes if len(bars) > 1 else [axes], bars, strict=True
        ):
            axis.bar(["omniroute", "baseline"], [ours, theirs], color=["tab:blue", "tab:gray"])
            axis.set(title=name, ylabel=unit)
        figure.tight_layout()
        figure.savefig(out / "throughput_vs_baseline.png", dpi=110)
        plt.close(figure)
        written.append("throughput_vs_baseline.png")
    b4 = report["scenarios"].get("B4", {})
    if "runs" in b4:
        figure, axis = plt.subplots(figsize=(6, 3.8))
        quantiles = ["p50_ms", "p90_ms", "p99_ms", "max_ms"]
        for label, runs in (("webhook → WebSocket", b4["runs"]), ("raw aiokafka", b4["raw_runs"])):
            medians = [sorted(r[q] for r in runs)[len(runs) // 2] for q in quantiles]
            axis.plot([q[:-3] for q in quantiles], medians, marker="o", label=label)
        axis.set(
            title=f"B4 latency at {b4['offered_rps']:.0f} msg/s (open loop)",
            ylabel="ms from scheduled send",
            yscale="log",
        )
        axis.legend()
        figure.tight_layout()
        figure.savefig(out / "b4_latency.png", dpi=110)
        plt.close(figure)
        written.append("b4_latency.png")
    return written


def render(report: dict[str, Any], out: Path, *, name: str, with_plots: bool = True) -> None:
    text = table(report)
    machine = report["machine"]
    header = (
        f"# omniroute bench — {report['generated_at']}\n\n"
        f"Machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
        f"load average at start {', '.join(f'{x:.2f}' for x in machine['load_average_at_start'])}; "
        f"took {report['elapsed_seconds']:.0f} s.\n\n"
    )
    images = plots(report, out) if with_plots else []
    body = header + text + "\n" + "".join(f"\n![{i}]({i})\n" for i in images)
    (out / f"{name}.md").write_text(body)
    print("\n" + text + "\n", flush=True)  # noqa: T201 - the bench's summary
