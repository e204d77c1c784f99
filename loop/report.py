"""The morning report: what a night of experiments tried, what it cost and what it bought.

Built from the journal alone (so it works on a run that is still going or that died): a printed
summary, `progress.png` (every experiment, the running best, the kept changes labelled, crashes
on their own strip), `report.md` (the same tables, ready to paste) and `experiments.csv` (every
journal field). A damaged journal line is named, never silently dropped; a holdout score that
stops following val along the kept line is flagged.
"""
from __future__ import annotations

import math
import re
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from loop.config import BEST_CRASHES, RATE_AFTER_EXPERIMENTS, RATE_AFTER_S
from loop.errors import SetupError, UsageError
from loop.events import (
    Committed,
    Decided,
    Evaluated,
    Event,
    HoldoutScored,
    Running,
    RunResumed,
    RunStarted,
    TrainingStarted,
)
from loop.journal import (
    JOURNAL_NAME,
    STATUSES,
    ExperimentRecord,
    RunRecord,
    fold,
    read_events,
    read_events_checked,
    run_dir,
    state_dir,
    unreproduced_warnings,
)
from loop.target import MetricView, metric_of

LABEL_CHARS = 34  # kept changes are labelled with this much of their description
X_AXES = ("experiment", "hours")
# Warn when more than this share of the val improvement along the kept line is not matched on
# the holdout: the search is then fitting the validation text rather than getting better.
HOLDOUT_GAP_SHARE = 0.25
# The entropy floor gets its own line when it lies within this many data spans below the lowest
# score; further down it would squash every experiment into a sliver, so it is noted instead.
FLOOR_REACH_SPANS = 1.5


@dataclass
class Repeat:
    """One run of an experiment (an experiment may be rerun with other seeds), and where it ran."""

    run: int = 0
    val: float | None = None
    holdout: float | None = None
    seed: int | None = None
    slot: str | None = None
    device: str | None = None
    host: str | None = None


@dataclass
class RunView:
    """A run as the report and the views read it: the fold, its events, and what had to be skipped."""

    tag: str
    run: RunRecord
    events: list[Event]
    problems: list[str]  # one line per skipped journal line
    repeats: dict[int, list[Repeat]]
    decided_at: dict[int, float]

    def holdout(self, n: int) -> float | None:
        return _mean([r.holdout for r in self.repeats.get(n, []) if r.holdout is not None])

    @property
    def pauses(self) -> list[tuple[float, float]]:
        """Spans (journal timestamps) when no daemon worked: from the last event before a resume to it."""
        spans, previous = [], None
        for ev in self.events:
            ts = _number(ev.ts)
            if ts is None:
                continue
            if isinstance(ev, (RunStarted, RunResumed)) and previous is not None and ts > previous:
                spans.append((previous, ts))
            previous = ts
        return spans

    def finished_ts(self, rec: ExperimentRecord) -> float | None:
        """When the experiment was decided (or, failing that, recorded, or begun)."""
        return self.decided_at.get(rec.n) or rec.finished_at or rec.started_at


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def read_run(repo: Path, tag: str) -> RunView:
    """Read one run's journal, naming every line that had to be skipped."""
    events, problems = read_events_checked(run_dir(repo, tag) / JOURNAL_NAME)
    run = fold(events)
    run.tag = run.tag or tag
    repeats: dict[int, list[Repeat]] = defaultdict(list)
    decided_at: dict[int, float] = {}
    placed: dict[tuple[int, int], dict[str, Any]] = {}  # (n, run) -> its seed, slot, device, host
    for ev in events:
        match ev:
            case Committed():  # a fix attempt is a new commit: its runs are numbered afresh
                placed = {key: where for key, where in placed.items() if key[0] != ev.n}
            case Running():
                placed[ev.n, ev.run] = {"seed": ev.seed}
            case TrainingStarted():
                placed.setdefault((ev.n, ev.run), {}).update(slot=ev.slot, device=ev.device, host=ev.host)
            case Evaluated():
                val = _number(ev.val_bpb)
                repeats[ev.n].append(Repeat(run=ev.run, val=val if val is not None else _number(ev.scores.get("val")),
                                            holdout=_number(ev.scores.get("holdout")),
                                            **placed.get((ev.n, ev.run), {})))
            case HoldoutScored():  # scored from one run's checkpoint: it goes beside that run's val
                holdout = _number(ev.scores.get("holdout"))
                scored = [r for r in repeats[ev.n] if r.run == ev.run and r.val is not None and r.holdout is None]
                if scored:
                    scored[-1].holdout = holdout
                else:
                    repeats[ev.n].append(Repeat(run=ev.run, holdout=holdout))
            case Decided() if _number(ev.ts) is not None:
                decided_at[ev.n] = float(ev.ts)  # type: ignore[arg-type]
    _score_by_mean(run, repeats)
    return RunView(tag=tag, run=run, events=events, problems=problems, repeats=dict(repeats), decided_at=decided_at)


def _score_by_mean(run: RunRecord, repeats: dict[int, list[Repeat]]) -> None:
    # The fold keeps the last run's score; an experiment rerun with other seeds is scored by the
    # mean of its runs, as results.tsv records it. A crash stays without a score.
    for rec in run.experiments:
        vals = [r.val for r in repeats.get(rec.n, []) if r.val is not None]
        if rec.status != "crash" and vals and not rec.decided_runs:  # newer journals record the mean
            rec.val_bpb = sum(vals) / len(vals)


def warn(problems: list[str], tag: str) -> None:
    for problem in problems:
        print(f"autoresearch: warning: run {tag}: {problem}", file=sys.stderr)


@dataclass
class Summary:
    tag: str
    experiments: int  # besides the baseline, as status counts them
    counts: dict[str, int]
    rates: dict[str, float]
    hours: float
    per_hour: float | None  # None: too early to say, by the rule `status` follows
    training_share: float
    baseline: float | None
    best: float | None
    best_commit: str
    improvement: float | None
    improvement_pct: float | None
    cost_usd: float
    tokens: dict[str, int]
    interrupted: int
    failed_proposals: int
    running: bool
    kept: list[tuple[int, str, str, float, float | None]] = field(default_factory=list)  # n, commit, desc, bpb, delta
    crashes: dict[str, list[int]] = field(default_factory=dict)
    unreproduced: list[str] = field(default_factory=list)  # a warning per kept experiment that crashed when run again
    metric: MetricView = field(default_factory=MetricView)  # scores here are the controller's (lower is better)


def summarize(run: RunRecord, now: float | None = None) -> Summary:
    done = run.finished
    tried = [e for e in done if e.n > 0]  # as status and --max-experiments count them
    counts = {s: sum(e.status == s for e in tried) for s in STATUSES}
    running = run.stopped_at is None  # or killed without a word: the journal cannot tell
    last_ts = max([t for e in run.experiments for t in (e.started_at, e.finished_at) if t] + [run.stopped_at or 0])
    end = (now or time.time()) if run.stopped_at is None else max(run.stopped_at, last_ts)
    hours = max(end - (run.started_at or end), 0.0) / 3600
    baseline = next((e.val_bpb for e in done if e.n == 0), None)
    best = run.best
    kept: list[tuple[int, str, str, float, float | None]] = []
    previous = None
    for e in done:
        if e.status == "keep" and e.val_bpb is not None:
            delta = None if previous is None else e.val_bpb - previous
            kept.append((e.n, (e.commit or "")[:7], e.description, e.val_bpb, delta))
            previous = e.val_bpb
    crashes: dict[str, list[int]] = defaultdict(list)
    for e in done:
        if e.status == "crash":
            crashes[crash_kind(e.reason)].append(e.n)
    usage = run.total_usage
    # status's rule: a rate from a few seconds (a target whose experiments take under one) is noise
    rate_known = hours * 3600 >= RATE_AFTER_S or len(tried) >= RATE_AFTER_EXPERIMENTS
    improvement = baseline - best.val_bpb if baseline is not None and best and best.val_bpb is not None else None
    return Summary(
        tag=run.tag, experiments=len(tried), counts=counts,
        rates={s: counts[s] / len(tried) if tried else 0.0 for s in STATUSES},
        hours=hours, per_hour=(len(tried) / hours if hours else 0.0) if rate_known else None,
        training_share=sum(e.train_seconds or 0.0 for e in done) / (hours * 3600) if hours else 0.0,
        baseline=baseline, best=best.val_bpb if best else None, best_commit=(best.commit or "")[:7] if best else "",
        improvement=improvement,
        improvement_pct=100 * improvement / abs(baseline) if improvement is not None and baseline else None,
        cost_usd=usage.cost_usd,
        tokens={"input": usage.input_tokens, "output": usage.output_tokens,
                "cache_write_5m": usage.cache_write_5m_tokens,
                "cache_write_1h": usage.cache_write_1h_tokens, "cache_read": usage.cache_read_tokens},
        interrupted=sum(e.status == "interrupted" for e in run.experiments),
        failed_proposals=sum(e.failed_proposals for e in run.experiments),
        running=bool(running), kept=kept, crashes=dict(sorted(crashes.items(), key=lambda kv: -len(kv[1]))),
        unreproduced=unreproduced_warnings(done, BEST_CRASHES),
        metric=metric_of(run.meta))


def crash_kind(reason: str) -> str:
    """Group crash reasons: the guard's finding, the exception type, timeouts, budget, eval."""
    if reason.startswith("guard: "):
        finding = re.sub(r"^train\.py:\d+: ", "", reason[7:])
        return "guard: " + re.split(r"[:(]", finding)[0].strip()
    if match := re.match(r"exit -?\d+: ([A-Za-z_.]+(Error|Exception|Interrupt))", reason):
        return match.group(1)
    if reason.startswith("exit"):
        return "exit: " + reason.split(": ", 1)[-1][:40]
    return re.split(r"[:(]| after", reason)[0].strip() or "unknown"


@dataclass
class HoldoutGap:
    """How far the holdout score trails val along the kept line, first kept point to last.

    gap = holdout - val at a kept experiment; growth = last gap - first gap, which equals the val
    improvement minus the holdout improvement between the two. It warns when growth exceeds
    HOLDOUT_GAP_SHARE of the val improvement: that much of the gain does not carry over.
    """

    first_n: int
    last_n: int
    first_gap: float
    last_gap: float
    val_gain: float

    @property
    def growth(self) -> float:
        return self.last_gap - self.first_gap

    @property
    def warns(self) -> bool:
        return self.growth > 0 and self.growth > HOLDOUT_GAP_SHARE * max(self.val_gain, 0.0)

    def text(self) -> str:
        share = f", {self.growth / self.val_gain:.0%} of the val gain {self.val_gain:.6f}" if self.val_gain > 0 else ""
        line = (f"holdout - val along the kept line: {self.first_gap:+.6f} at #{self.first_n}, {self.last_gap:+.6f} "
                f"at #{self.last_n} (grew by {self.growth:+.6f}{share})")
        if self.warns:
            line = (f"WARNING: {line}: more than {HOLDOUT_GAP_SHARE:.0%} of the val improvement does not show on "
                    f"the holdout; the search may be fitting the validation text")
        return line


def holdout_gap(view: RunView) -> HoldoutGap | None:
    """The holdout check over the kept experiments that carry a holdout score (None: fewer than two)."""
    points = []
    for e in view.run.finished:
        holdout = view.holdout(e.n)
        if e.status == "keep" and e.val_bpb is not None and holdout is not None:
            points.append((e.n, e.val_bpb, holdout))
    if len(points) < 2:
        return None
    (n0, val0, hold0), (n1, val1, hold1) = points[0], points[-1]
    return HoldoutGap(first_n=n0, last_n=n1, first_gap=hold0 - val0, last_gap=hold1 - val1, val_gain=val0 - val1)


def format_summary(s: Summary) -> str:
    bpb = s.metric.text
    rate = f"{s.per_hour:.1f}" if s.per_hour is not None else f"too early to say ({s.experiments} in {s.hours * 3600:.0f}s)"

    lines = [
        f"run {s.tag}: {'running (or killed)' if s.running else 'stopped'}, {s.hours:.2f} h",
        f"experiments: {s.experiments} besides the baseline (keep {s.counts['keep']} {s.rates['keep']:.0%}, discard "
        f"{s.counts['discard']} {s.rates['discard']:.0%}, crash {s.counts['crash']} {s.rates['crash']:.0%}); "
        f"interrupted {s.interrupted}; failed proposals (the agent's answers that made no experiment) {s.failed_proposals}",
        f"experiments per hour: {rate}; share of wall-clock spent training: {s.training_share:.0%}",
        f"baseline {s.metric.name}: {bpb(s.baseline)}; best: {bpb(s.best)} ({s.best_commit})"
        + (f"; improvement {s.improvement:.6f} ({s.improvement_pct:.2f}%)" if s.improvement is not None else ""),
        f"spend: ${s.cost_usd:.2f}; tokens: " + ", ".join(f"{k} {v:,}" for k, v in s.tokens.items()),
    ]
    lines += s.unreproduced
    return "\n".join(lines)


def tables_markdown(s: Summary) -> str:
    out = [f"| # | commit | description | {s.metric.name} | change |", "|---|---|---|---|---|"]
    for n, commit, desc, bpb, delta in s.kept:
        change = "" if delta is None else s.metric.change(bpb, bpb - delta)
        out.append(f"| {n} | {commit} | {desc.replace('|', '/')} | {s.metric.text(bpb)} | {change} |")
    if not s.crashes:  # a header with no rows under it reads as a table that failed to fill
        return "\n".join([*out, "", "Crashes: none."])
    out += ["", "| crash kind | count | experiments |", "|---|---|---|"]
    for kind, ns in s.crashes.items():
        out.append(f"| {kind.replace('|', '/')} | {len(ns)} | {', '.join(map(str, ns))} |")
    return "\n".join(out)


def experiments_frame(view: RunView) -> pd.DataFrame:
    rows = []
    for e in view.run.experiments:
        row = {k: v for k, v in asdict(e).items() if k not in ("summary", "usage")}
        row.update({f"summary_{k}": v for k, v in e.summary.items()})
        row.update({f"usage_{k}": v for k, v in e.usage.to_dict().items()})
        row["memory_gb"] = e.memory_gb
        repeats = view.repeats.get(e.n, [])
        row["holdout"] = view.holdout(e.n)
        row["runs"] = len(repeats)
        for name in ("seed", "slot", "device", "host"):
            row[f"{name}s"] = " ".join(str(getattr(r, name)) for r in repeats if getattr(r, name) is not None)
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class PlotLayout:
    """What progress.png shows and where, read back so the picture's rules can be checked without pixels."""

    x_axis: str
    ylim: tuple[float, float]
    best_line: list[tuple[float, float]] = field(default_factory=list)
    holdout_line: list[tuple[float, float]] = field(default_factory=list)
    # n, x, and the height of its marker as a fraction of the score axes, measured on the drawn
    # figure: below 0 is under the score axes, where no score can be read into it
    crashes: list[tuple[int, float, float]] = field(default_factory=list)
    crash_strip_below: bool = False  # the crash strip lies wholly under the score axes
    floor: float | None = None
    floor_drawn: str = ""  # "line", or "noted" when it lies too far below the scores
    # n, text, its box in fractions of the score axes (x0, y0, x1, y1); kept changes with no room for a label
    labels: list[tuple[int, str, tuple[float, float, float, float]]] = field(default_factory=list)
    unlabelled: list[int] = field(default_factory=list)
    pauses: list[tuple[float, float]] = field(default_factory=list)  # in x units
    legend: list[str] = field(default_factory=list)
    legend_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # in fractions of the score axes
    off_scale: list[tuple[float, float]] = field(default_factory=list)  # markers of results above the axis, as fractions
    xticks: list[float] = field(default_factory=list)
    title: str = ""


# Where a kept change's label may go, tried in order: below-left of its point first, since
# everything left of a new best scored worse, so that corner is empty (offsets in points).
LABEL_GAP = 5
LABEL_SPOTS = [spot for dy in (LABEL_GAP, LABEL_GAP + 14, LABEL_GAP + 28)
               for spot in ((-LABEL_GAP, -dy, "right", "top"), (LABEL_GAP, -dy, "left", "top"),
                            (-LABEL_GAP, dy, "right", "bottom"), (LABEL_GAP, dy, "left", "bottom"))]


def plot_progress(view: RunView, s: Summary, path: Path, x_axis: str = "experiment") -> PlotLayout:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = view.run
    done = run.finished
    when = {e.n: view.finished_ts(e) for e in done}
    origin = run.started_at or min((t for t in when.values() if t is not None), default=0.0)

    def x_of(n: int) -> float:
        return n if x_axis == "experiment" else ((when.get(n) or origin) - origin) / 3600

    scored = [(x_of(e.n), e.status or "", e.val_bpb) for e in done if e.val_bpb is not None]
    holdout_line = [(x_of(n), h) for n, *_ in s.kept if (h := view.holdout(n)) is not None]
    floor = _number(run.meta.get("floor"))
    bottom, top, floor_drawn = _value_range([v for *_, v in scored] + [h for _, h in holdout_line],
                                            s.baseline, view.holdout(0), floor)
    layout = PlotLayout(x_axis=x_axis, ylim=(bottom, top), floor=floor, floor_drawn=floor_drawn,
                        holdout_line=holdout_line)
    crashes = [e.n for e in done if e.status == "crash"]
    if crashes:  # crashes have no score: they get a strip of their own under the score axes
        fig, (ax, strip) = plt.subplots(2, 1, sharex=True, figsize=(12, 7), dpi=110,
                                        gridspec_kw={"height_ratios": [14, 1], "hspace": 0.04})
    else:
        fig, ax = plt.subplots(figsize=(12, 6.5), dpi=110)
        strip = None
    ax.set_ylim(bottom, top)
    off_scale = _draw_scores(ax, scored, bottom, top)
    if s.kept:
        end = max(x_of(e.n) for e in done)
        layout.best_line = [(x_of(k[0]), k[3]) for k in s.kept] + [(end, s.kept[-1][3])]
        ax.step(*zip(*layout.best_line), where="post", c="#2ca02c", lw=1.6, zorder=2, label="best so far (val)")
        if holdout_line:
            line = holdout_line + [(end, holdout_line[-1][1])]
            ax.step(*zip(*line), where="post", c="#1f5fa8", lw=1.3, ls="--", zorder=2, label="kept line on holdout")
    if floor is not None and floor_drawn == "line":
        ax.axhline(floor, c="#6a3d9a", lw=1.4, ls=":", zorder=1, label=f"entropy floor {floor:.4f}")
    elif floor is not None:
        ax.plot([], [], c="#6a3d9a", lw=1.4, ls=":", label=f"entropy floor {floor:.4f} (below the axis)")
    layout.pauses = _draw_pauses(ax, view, x_axis, origin)
    if strip is not None:
        _draw_crash_strip(strip, crashes, x_of)
    (strip or ax).set_xlabel("experiment" if x_axis == "experiment" else "wall-clock hours since the run started")
    layout.title = _title(s)
    ax.set_title(layout.title)
    ax.set_ylabel(f"{s.metric.plotted} (lower is better)")
    ax.grid(alpha=0.25)
    handles, layout.legend = ax.get_legend_handles_labels()
    if strip is not None:
        more, more_names = strip.get_legend_handles_labels()
        handles, layout.legend = handles + more, layout.legend + more_names
    # Lower left: a falling best line leaves it empty (no early score is that low), while the top
    # edge holds the markers of results off the scale.
    legend = ax.legend(handles, layout.legend, loc="lower left", fontsize=8)
    if x_axis == "experiment":  # experiments are whole numbers
        from matplotlib.ticker import MaxNLocator

        (strip or ax).xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.subplots_adjust(left=0.07, right=0.98, top=0.94, bottom=0.09)
    layout.labels, layout.unlabelled = _place_labels(fig, ax, s.kept, x_of, legend)
    to_axes = ax.transAxes.inverted()
    box = legend.get_window_extent().transformed(to_axes)
    layout.legend_box = (box.x0, box.y0, box.x1, box.y1)
    layout.off_scale = [tuple(to_axes.transform(ax.transData.transform(point))) for point in off_scale]
    layout.xticks = [float(t) for t in (strip or ax).get_xticks()]
    if strip is not None:
        layout.crash_strip_below = bool(strip.get_window_extent().y1 <= ax.get_window_extent().y0)
        layout.crashes = _crash_heights(ax, strip, crashes)
    fig.savefig(path)
    plt.close(fig)
    return layout


def _draw_scores(ax: Any, scored: list[tuple[float, str, float]], bottom: float, top: float) -> list[tuple[float, float]]:
    """Kept and discarded experiments at their score; those worse than the axis shows, at its top
    edge (where they are drawn, returned)."""
    for status, color, size in (("discard", "#b0b0b0", 22), ("keep", "#2ca02c", 46)):
        pts = [(x, v) for x, st, v in scored if st == status and v <= top]
        if pts:
            ax.scatter(*zip(*pts), c=color, s=size, zorder=3, label=status, edgecolors="none")
    clipped = [x for x, _, v in scored if v > top]
    if clipped:  # just under the top edge, so the whole marker shows
        edge = top - (top - bottom) * 0.015
        ax.scatter(clipped, [edge] * len(clipped), marker="^", c="#b0b0b0", s=30, zorder=3,
                   label="worse, off the scale")
        return [(x, edge) for x in clipped]
    return []


def _draw_crash_strip(strip: Any, crashes: list[int], x_of: Any) -> None:
    xs = [x_of(n) for n in crashes]
    strip.scatter(xs, [0.5] * len(xs), marker="x", c="#d62728", s=30, zorder=3, label="crash (no score)")
    strip.set_ylim(0, 1)
    strip.set_yticks([])
    strip.set_ylabel("crash", rotation=0, ha="right", va="center", fontsize=8)
    strip.grid(axis="x", alpha=0.25)


def _crash_heights(ax: Any, strip: Any, crashes: list[int]) -> list[tuple[int, float, float]]:
    """Where the crash markers landed, read back from the drawn strip, in the score axes' fractions."""
    offsets = strip.collections[0].get_offsets()
    display = strip.transData.transform(offsets)
    fractions = ax.transAxes.inverted().transform(display)
    return [(n, float(x), float(y)) for n, (x, _), (_, y) in zip(crashes, offsets.tolist(), fractions.tolist())]


def _title(s: Summary) -> str:
    title = (f"autoresearch run {s.tag}: {s.experiments} experiment{'' if s.experiments == 1 else 's'} besides the "
             f"baseline, {s.counts['keep']} kept")
    if s.baseline is None or s.best is None or s.improvement_pct is None:
        return title
    if not s.improvement:  # `a → a (-0.00%)` would read as a change
        return title + f"; {s.metric.name} {s.metric.shown(s.baseline):.4f}, no improvement"
    before, after = s.metric.shown(s.baseline), s.metric.shown(s.best)
    digits = 4 if f"{before:.4f}" != f"{after:.4f}" else 6  # a gain under 0.0001 still shows as one
    pct = s.improvement_pct if s.metric.higher_is_better else -s.improvement_pct
    share = f"{pct:+.2f}%" if abs(pct) >= 0.005 else f"{pct:+.2g}%"
    return title + f"; {s.metric.name} {before:.{digits}f} → {after:.{digits}f} ({share})"


def _value_range(values: list[float], baseline: float | None, baseline_holdout: float | None,
                 floor: float | None) -> tuple[float, float, str]:
    """The score axis: from just under the best (room for labels) to a margin over the baseline."""
    if not values:
        return 0.0, 1.0, "line" if floor is not None else ""
    low = min(values)
    ceiling = max([v for v in (baseline, baseline_holdout) if v is not None] or [max(values)])
    span = max(ceiling - low, 1e-3)
    top = ceiling + max(span * 0.35, 0.005)
    bottom = low - max(span * 0.12, 0.002)
    if floor is None:
        return bottom, top, ""
    if floor >= low - FLOOR_REACH_SPANS * span:
        return min(bottom, floor - span * 0.05), max(top, floor + span * 0.05), "line"
    return bottom, top, "noted"


def _draw_pauses(ax: Any, view: RunView, x_axis: str, origin: float) -> list[tuple[float, float]]:
    """Shade the spans when no daemon ran (a stop or a kill, then a resume) on the hours axis;
    on the experiment axis, a line where the run resumed."""
    spans: list[tuple[float, float]] = []
    for i, (paused, resumed) in enumerate(view.pauses):
        if x_axis == "hours":
            span = ((paused - origin) / 3600, (resumed - origin) / 3600)
            ax.axvspan(*span, color="#f0d9a8", alpha=0.6, zorder=0, lw=0, label="no daemon running" if not i else None)
        else:
            after = [e.n for e in view.run.experiments if e.started_at is not None and e.started_at >= resumed]
            if not after:
                continue
            span = (min(after) - 0.5, min(after) - 0.5)
            ax.axvline(span[0], color="#d9a441", lw=1.0, ls="--", zorder=0, label="resumed" if not spans else None)
        spans.append(span)
    return spans


def _place_labels(fig: Any, ax: Any, kept: list[tuple[int, str, str, float, float | None]], x_of: Any,
                  legend: Any) -> tuple[list[tuple[int, str, tuple[float, float, float, float]]], list[int]]:
    """Label kept changes, the baseline and the largest gains first, each where it stays inside the
    axes and clear of the legend and the labels before it; a change with no such spot goes
    unlabelled (the kept table lists them all). Returns the labels placed and the ones left out."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = [legend.get_window_extent(renderer)]
    placed, left_out = [], []
    for n, _, desc, bpb, delta in sorted(kept, key=lambda k: (k[4] is not None, k[4] or 0.0)):
        text = desc if len(desc) <= LABEL_CHARS else desc[: LABEL_CHARS - 1] + "…"
        label = ax.annotate(text, (x_of(n), bpb), xytext=(0, 0), textcoords="offset points", fontsize=7.5,
                            color="#1b5e20", annotation_clip=False)
        box = None
        for dx, dy, ha, va in LABEL_SPOTS:
            label.set_position((dx, dy))
            label.set_ha(ha)
            label.set_va(va)
            candidate = label.get_window_extent(renderer)
            inside = frame.x0 <= candidate.x0 and candidate.x1 <= frame.x1 and frame.y0 <= candidate.y0 \
                and candidate.y1 <= frame.y1
            if inside and not any(candidate.overlaps(other) for other in taken):
                box = candidate
                break
        label.remove()
        if box is None:
            left_out.append(n)
            continue
        # A label moved away from its point gets a thin leader so it still reads as that point's.
        leader = {"arrowstyle": "-", "color": "#9ccc9c", "lw": 0.6} if abs(dy) > LABEL_GAP else None
        ax.annotate(text, (x_of(n), bpb), xytext=(dx, dy), textcoords="offset points", fontsize=7.5, ha=ha, va=va,
                    color="#1b5e20", annotation_clip=False, arrowprops=leader)
        taken.append(box)
        (x0, y0), (x1, y1) = ax.transAxes.inverted().transform([[box.x0, box.y0], [box.x1, box.y1]]).tolist()
        placed.append((n, text, (x0, y0, x1, y1)))
    return sorted(placed), sorted(left_out)


def plot_compare(runs: list[RunRecord], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_time, by_n) = plt.subplots(1, 2, figsize=(13, 5), dpi=110)
    for run in runs:
        best, pts = None, []
        for e in run.finished:
            if e.status == "keep" and e.val_bpb is not None:
                best = e.val_bpb
            if best is not None:
                pts.append((e.n, ((e.finished_at or 0) - (run.started_at or 0)) / 3600, best))
        if pts:
            by_time.step([p[1] for p in pts], [p[2] for p in pts], where="post", label=run.tag)
            by_n.step([p[0] for p in pts], [p[2] for p in pts], where="post", label=run.tag)
    for ax, xlabel in ((by_time, "wall-clock hours"), (by_n, "experiment")):
        ax.set_xlim(left=0)  # from the run's start, not its first decision
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"best {metric_of(runs[0].meta).plotted if runs else 'val_bpb'} so far")
        ax.grid(alpha=0.25)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def latest_tag(repo: Path) -> str | None:
    journals = list((state_dir(repo) / "runs").glob("*/journal.jsonl"))
    started = []
    for j in journals:
        times = [_number(e.ts) for e in read_events(j) if isinstance(e, RunStarted)]
        if known := [t for t in times if t is not None]:
            started.append((known[-1], j.parent.name))
    return max(started)[1] if started else None


def report_command(repo: Path, tag: str | None, out: Path | None, compare: list[str], x: str = "experiment") -> int:
    if x not in X_AXES:
        raise UsageError(f"--x {x!r}: use one of {', '.join(X_AXES)}")
    if compare:  # `--tag X --compare Y Z` sets X beside Y and Z
        return _compare_command(repo, out, ([tag] if tag and tag not in compare else []) + compare)
    tag = tag or latest_tag(repo)
    if tag is None:
        raise SetupError("no run found in .autoresearch/runs: start one with `autoresearch start --tag NAME`")
    if not (run_dir(repo, tag) / JOURNAL_NAME).exists():
        raise SetupError(f"no run tagged {tag} in .autoresearch/runs: `autoresearch runs` lists them")
    view = read_run(repo, tag)
    warn(view.problems, tag)
    run = view.run
    if not run.experiments:
        raise SetupError(f"run {tag} has no experiments yet: its journal is {run_dir(repo, tag) / JOURNAL_NAME}")
    out = out or run_dir(repo, tag) / "report"
    out.mkdir(parents=True, exist_ok=True)
    s = summarize(run)
    text = format_summary(s)
    gap = holdout_gap(view)
    if gap is not None:
        text += "\n" + gap.text()
    print(text)
    # in the metric's own sign and direction, as the tables show them (an accuracy is negated inside)
    print("\nkept improvements:\n" + "\n".join(
        f"  #{n} {c} {s.metric.text(b)} {'' if d is None else s.metric.change(b, b - d)}  {desc}"
        for n, c, desc, b, d in s.kept))
    crashes = [f"  {len(ns):3d}  {kind}  (#{', #'.join(map(str, ns))})" for kind, ns in s.crashes.items()]
    print("crashes by reason:\n" + ("\n".join(crashes) or "  (none)"))
    plot_progress(view, s, out / "progress.png", x)
    experiments_frame(view).to_csv(out / "experiments.csv", index=False)
    (out / "report.md").write_text(report_markdown(view, s, text), encoding="utf-8")
    print(f"\nreport written to {out}: progress.png, report.md, experiments.csv")
    return 0


def report_markdown(view: RunView, s: Summary, text: str) -> str:
    parts = [f"# autoresearch run `{view.tag}`\n", f"```\n{text}\n```\n"]
    if view.problems:
        parts.append("## Journal lines skipped\n\n" + "".join(f"- {p}\n" for p in view.problems))
    gap = holdout_gap(view)
    if gap is not None and gap.warns:
        parts.append(f"## Holdout\n\n**{gap.text()}**\n\nMeasured as holdout - val at the first and the last kept "
                     f"experiment; the warning fires when it grows by more than {HOLDOUT_GAP_SHARE:.0%} of the val "
                     "improvement between them.\n")
    parts.append("![progress](progress.png)\n")
    parts.append(f"## Kept improvements and crashes\n\n{tables_markdown(s)}\n")
    parts.append(f"## Every experiment\n\n{tried_markdown(view, s)}\n")
    return "\n".join(parts)


def tried_markdown(view: RunView, s: Summary) -> str:
    """What was tried, in the order it was decided: its outcome, score against the best it faced,
    and why (a discard's reason says how it fell short; a crash's what broke)."""
    out = [f"| # | status | {s.metric.name} | against the best | runs | description | why |", "|---|---|---|---|---|---|---|"]
    done = sorted(view.run.finished, key=lambda e: (e.decided_order is None, e.decided_order or 0, e.n))
    for e in done:
        against = (s.metric.change(e.val_bpb, e.best_before)
                   if e.val_bpb is not None and e.best_before is not None else "")
        cells = [str(e.n), e.status or "", s.metric.text(e.val_bpb) if e.val_bpb is not None else "-", against,
                 str(e.decided_runs or len(e.scores()) or ""), e.description, e.reason]
        out.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    return "\n".join(out)


def _compare_command(repo: Path, out: Path | None, compare: list[str]) -> int:
    runs = []
    for t in compare:
        view = read_run(repo, t)
        warn(view.problems, t)
        if not view.run.experiments:
            raise SetupError(f"no run tagged {t} in .autoresearch/runs: `autoresearch runs` lists them")
        runs.append(view.run)
    out = out or state_dir(repo) / "compare"
    out.mkdir(parents=True, exist_ok=True)
    plot_compare(runs, out / "compare.png")
    print("tag\texperiments\tbest\timprovement\tcost_usd")
    for run in runs:
        s = summarize(run)
        improvement = f"{s.improvement:.6f}" if s.improvement is not None else "-"
        print(f"{s.tag}\t{s.experiments}\t{s.metric.text(s.best)}\t{improvement}\t{s.cost_usd:.2f}")
    print(f"wrote {out / 'compare.png'}")
    return 0
