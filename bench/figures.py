"""Figures of a `make bench` run: SVGs drawn from its results (the JSON bench/run.py writes), next to that file.

    python -m bench.figures bench/results/latest.json [more.json ...]   # redraw from saved runs

For results `<stem>.json`, each only when its data is in the results (`--only B3` has no B1):
- `<stem>-b3.svg`: B3, p99 inter-token gap against N for the ceiling, LangServe and our `/chat` (one worker),
  with the ideal gap as a line;
- `<stem>-b1.svg`: B1, events/s of each contestant, with its ratio to the ceiling;
- `<stem>-workers.svg`: B3, our `/chat`'s p99 gap against its number of workers, a line per N, the one-worker
  ceiling at that N as a reference;
- `<stem>-cpu.svg`: B3, the server's CPU time per token sent against N, per contestant.
Every point is a median over the run's runs, its bar the min–max. Drawn without pyplot (no display, no global
figure state); text is kept as SVG text, which keeps the files small and searchable.
"""

from __future__ import annotations

import datetime
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter

Summary = dict[str, float]  # median, min, max
Rows = dict[int, dict[str, dict[str, Summary]]]  # B3: N → stream kind → metric → summary

SVG_STYLE = {"svg.fonttype": "none", "svg.hashsalt": "bench", "font.size": 10}  # hashsalt: same ids each draw
COLORS = {"ceiling": "0.3", "tutorial": "tab:brown", "langserve": "tab:orange", "ours": "tab:blue",
          "ours_no_store": "tab:cyan", "ours_redis": "tab:red", "ours_v1": "tab:purple",
          "ours_unobserved": "tab:olive", "ours_traced": "tab:pink", "ours_2_workers": "tab:green",
          "ours_4_workers": "tab:purple"}
B1_LABELS = {"ceiling": "ceiling: bare Starlette, pre-encoded", "tutorial": "tutorial's handler",
             "langserve": "LangServe /stream", "ours": "our /chat (in-memory run store)",
             "ours_no_store": "our /chat, runs kept by no store", "ours_redis": "our /chat, Redis run store",
             "ours_v1": "our /v1/chat/completions", "ours_unobserved": "our /chat, nothing recorded",
             "ours_traced": "our /chat, metrics + tracing"}
B3_LABELS = {"ceiling": "ceiling: bare paced generator", "langserve": "LangServe /single-turn/stream",
             "ours": "our /chat"}
WORKERS_KEY = re.compile(r"ours(?:_(\d+)_workers)?")  # bench/run.py's ours_with_workers: `ours` is one worker


def workers_of(name: str) -> int | None:
    """How many workers served a B3 stream kind of our `/chat` (None: not one of the worker series)."""
    match = WORKERS_KEY.fullmatch(name)
    return None if match is None else int(match.group(1) or 1)


def draw(results: dict[str, Any], json_path: Path) -> list[Path]:
    """Writes every figure the results have data for next to `json_path`; returns their paths."""
    context = Context(results, json_path)
    written = []
    with rc_context(cast(Any, SVG_STYLE)):  # matplotlib 3.11's stubs want its rc keys' Literal, not str
        for suffix, drawer in DRAWERS.items():
            figure = drawer(context)
            if figure is None:
                continue
            path = json_path.with_name(f"{json_path.stem}-{suffix}.svg")
            figure.savefig(path, format="svg", metadata={"Date": None})  # no date stamp: a redraw is the same file
            written.append(path)
    return written


class Context:
    """What every figure shares: the results, B3's rows by N, and the caption line (date, machine, runs)."""

    def __init__(self, results: dict[str, Any], json_path: Path) -> None:
        self.results = results
        self.sizes: dict[str, Any] = results.get("sizes", {})
        self.b3: Rows = {int(n): {name: row for name, row in by_name.items()
                                  if isinstance(row, dict) and "p99_ms" in row}  # not the ratios beside them
                         for n, by_name in results.get("B3", {}).items()}
        self.caption = (f"{run_date(results, json_path)} · {results.get('machine', 'machine not recorded')} · "
                        f"median of {self.sizes.get('runs', '?')} runs, bars min–max")

    @property
    def b3_caption(self) -> str:
        rate = 1000 / self.sizes.get("b3_delay_ms", 50)
        return f"{self.sizes.get('b3_tokens', 100)} tokens per stream at {rate:g} tokens/s · {self.caption}"

    def series(self, name: str, metric: str) -> tuple[list[int], list[Summary]]:
        """One stream kind's B3 metric at each N it was measured at."""
        sizes = [n for n in sorted(self.b3) if metric in self.b3[n].get(name, {})]
        return sizes, [self.b3[n][name][metric] for n in sizes]


def run_date(results: dict[str, Any], json_path: Path) -> str:
    """The run's date (runs before the date was recorded: the file's, said so)."""
    if "date" in results:
        return datetime.datetime.fromisoformat(results["date"]).strftime("%Y-%m-%d %H:%M")
    if json_path.exists():
        return "file of " + datetime.date.fromtimestamp(json_path.stat().st_mtime).isoformat()
    return "date not recorded"


def new_figure(title: str, caption: str, width: float = 7.5, height: float = 4.8) -> tuple[Figure, Axes]:
    """One plot, its title on top and the caption (what was run, when, where) on the figure's bottom line."""
    figure = Figure(figsize=(width, height), layout="constrained")
    figure.suptitle(title, fontweight="bold")
    figure.supxlabel(caption, fontsize=8, color="0.35")
    axes = figure.add_subplot()
    axes.grid(True, which="major", color="0.9")
    axes.set_axisbelow(True)
    return figure, axes


def plot_summaries(axes: Axes, xs: Sequence[float], summaries: Sequence[Summary], label: str, color: str,
                   **style: Any) -> None:
    """Medians as a line, min–max as error bars."""
    medians = [s["median"] for s in summaries]
    below = [m - s["min"] for m, s in zip(medians, summaries)]
    above = [s["max"] - m for m, s in zip(medians, summaries)]
    axes.errorbar(xs, medians, yerr=[below, above], label=label, color=color, marker="o", markersize=4,
                  capsize=3, linewidth=1.5, **style)


def mark_failures(axes: Axes, xs: Iterable[float], rows: Iterable[dict[str, Summary]]) -> None:
    """Streams that failed, written beside the point they belong to (a gap from failed streams is not the whole
    story)."""
    for x, row in zip(xs, rows):
        failed = row.get("failures", {}).get("max", 0)
        if failed:
            axes.annotate(f"{failed:,.0f} failed", (x, row["p99_ms"]["median"]), textcoords="offset points",
                          xytext=(-14, -22), fontsize=7, color="tab:red")


def log_axis(axis: Axis, ticks: Iterable[float] | None = None) -> None:
    """A log scale labelled in plain numbers: at `ticks`, or at 1-2-5 steps."""
    axis.set_major_locator(FixedLocator(list(ticks)) if ticks is not None else LogLocator(subs=(1, 2, 5)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def ideal_gap(axes: Axes, sizes: dict[str, Any]) -> None:
    delay = sizes.get("b3_delay_ms", 50)
    axes.axhline(delay, color="tab:green", linestyle=":", linewidth=1.2,
                 label=f"ideal: {delay:g} ms ({1000 / delay:g} tokens/s)")


def against_streams(axes: Axes, context: Context, ylabel: str) -> None:
    """B3's axes against N: both log scales (N doubles from step to step, gaps and costs span decades), ticked
    at the sizes measured."""
    axes.set_xscale("log")
    axes.set_yscale("log")
    log_axis(axes.xaxis, sorted(context.b3))
    log_axis(axes.yaxis)
    axes.set_xlabel("concurrent streams N (log scale)")
    axes.set_ylabel(ylabel)
    axes.legend(fontsize=8)


def draw_b3_gaps(context: Context) -> Figure | None:
    """(a) p99 gap against N: how each stream kind holds its pace as streams are added."""
    if not context.b3:
        return None
    figure, axes = new_figure("B3: p99 gap between tokens against concurrent streams", context.b3_caption)
    for name, label in B3_LABELS.items():
        sizes, summaries = context.series(name, "p99_ms")
        if sizes:
            plot_summaries(axes, sizes, summaries, label, COLORS[name])
            mark_failures(axes, sizes, (context.b3[n][name] for n in sizes))
    ideal_gap(axes, context.sizes)
    against_streams(axes, context, "p99 inter-token gap (ms, log scale)")
    return figure


def draw_b1_rates(context: Context) -> Figure | None:
    """(b) events/s of each B1 contestant, as bars, with its share of the ceiling written at the bar's end."""
    b1 = context.results.get("B1")
    if not b1:
        return None
    names = [name for name, value in b1.items() if "_vs_" not in name and isinstance(value, dict)]
    ceiling = b1["ceiling"]["median"] if "ceiling" in b1 else None
    tokens, replies = context.sizes.get("b1_tokens", 5000), context.sizes.get("b1_replies", 1)
    figure, axes = new_figure("B1: stack cost, events per second (higher is better)",
                              f"{tokens:,}-token replies from a zero-delay model, {replies} a run · {context.caption}",
                              width=8.5, height=1.6 + 0.42 * len(names))
    positions = list(range(len(names)))[::-1]  # the first contestant at the top
    medians = [b1[name]["median"] for name in names]
    errors = [[m - b1[n]["min"] for m, n in zip(medians, names)], [b1[n]["max"] - m for m, n in zip(medians, names)]]
    axes.barh(positions, medians, xerr=errors, capsize=3, color=[COLORS.get(n, "0.6") for n in names],
              error_kw={"elinewidth": 1, "ecolor": "0.2"})
    for position, name, median in zip(positions, names, medians):
        share = f"  ({median / ceiling:.2f}× ceiling)" if ceiling and name != "ceiling" else ""
        axes.annotate(f"{median:,.0f}{share}", (b1[name]["max"], position), textcoords="offset points",
                      xytext=(6, -3), fontsize=8)
    axes.set_yticks(positions, [B1_LABELS.get(n, n) for n in names])
    axes.set_xlabel("events/s, from the request to the last event")
    axes.xaxis.set_major_locator(MaxNLocator(6))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value / 1000:,.0f}k" if value else "0"))
    axes.set_xlim(0, max(b1[n]["max"] for n in names) * 1.35)  # room for the labels
    axes.grid(False, axis="y")
    return figure


def draw_worker_scaling(context: Context) -> Figure | None:
    """(c) our p99 gap against workers, a line per N, against the one-worker ceiling at that N."""
    scaled = {n: {count: row for name, row in rows.items() if (count := workers_of(name)) is not None}
              for n, rows in context.b3.items()}
    scaled = {n: dict(sorted(by_workers.items())) for n, by_workers in scaled.items() if len(by_workers) > 1}
    if not scaled:
        return None
    figure, axes = new_figure("B3: our /chat's p99 gap between tokens against workers", context.b3_caption)
    line_colors = ("tab:blue", "tab:purple", "tab:red", "tab:brown")
    for line, ((n, by_workers), color) in enumerate(zip(sorted(scaled.items()), line_colors)):
        workers = list(by_workers)
        plot_summaries(axes, workers, [row["p99_ms"] for row in by_workers.values()], f"our /chat, N={n:,}", color)
        mark_failures(axes, workers, by_workers.values())
        ceiling = context.b3[n].get("ceiling")
        if ceiling is None:
            continue
        axes.axhline(ceiling["p99_ms"]["median"], color=color, linestyle="--", linewidth=1,
                     label=f"ceiling (1 worker), N={n:,}")
        for count, row in by_workers.items():
            axes.annotate(f"{row['p99_ms']['median'] / ceiling['p99_ms']['median']:.2f}×",
                          (count, row["p99_ms"]["median"]), textcoords="offset points",
                          xytext=(6, 4 if line % 2 == 0 else -12), fontsize=8, color=color)  # lines that meet
    ideal_gap(axes, context.sizes)
    counts = sorted({count for by_workers in scaled.values() for count in by_workers})
    axes.set_xscale("log", base=2)
    log_axis(axes.xaxis, counts)
    axes.set_xlim(counts[0] / 1.4, counts[-1] * 1.4)
    axes.set_ylim(bottom=0)
    axes.set_xlabel("uvicorn workers on one port (beside each point: its p99 ÷ the ceiling's at that N)")
    axes.set_ylabel("p99 inter-token gap (ms)")
    axes.legend(fontsize=8)
    return figure


def draw_cpu_per_token(context: Context) -> Figure | None:
    """(d) the server's CPU time per token sent, against N: how the cost of a token grows with load."""
    several_workers = sorted({name for rows in context.b3.values() for name in rows if (workers_of(name) or 1) > 1},
                             key=lambda name: workers_of(name) or 1)
    names = [name for name in ("ceiling", "langserve", "ours", *several_workers)
             if context.series(name, "cpu_us_per_token")[0]]
    if not names:
        return None
    figure, axes = new_figure("B3: server CPU time (user + system, all workers) per token sent", context.b3_caption)
    for name in names:
        sizes, summaries = context.series(name, "cpu_us_per_token")
        label = B3_LABELS.get(name) or f"our /chat, {workers_of(name)} workers"
        plot_summaries(axes, sizes, summaries, label, COLORS.get(name, "0.6"),
                       linestyle="-" if (workers_of(name) or 1) == 1 else "--")
    against_streams(axes, context, "CPU per token sent (µs, log scale)")
    return figure


DRAWERS = {"b3": draw_b3_gaps, "b1": draw_b1_rates, "workers": draw_worker_scaling, "cpu": draw_cpu_per_token}


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m bench.figures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="a JSON file bench/run.py wrote")
    for json_path in parser.parse_args(argv).results:
        for path in draw(json.loads(json_path.read_text()), json_path):
            print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
