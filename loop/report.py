"""The morning report: what a night of experiments tried, what it cost and what it bought.

Built from the journal alone (so it works on a run that is still going or that died): a printed
summary, `progress.png` (every experiment, the running best, the kept changes labelled),
`report.md` (the same tables, ready to paste) and `experiments.csv` (every journal field).
"""
from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from loop.errors import SetupError
from loop.journal import STATUSES, RunRecord, load_run, read_events, run_dir, state_dir

LABEL_CHARS = 34  # kept changes are labelled with this much of their description


@dataclass
class Summary:
    tag: str
    experiments: int
    counts: dict[str, int]
    rates: dict[str, float]
    hours: float
    per_hour: float
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


def summarize(run: RunRecord, now: float | None = None) -> Summary:
    done = run.finished
    counts = {s: sum(e.status == s for e in done) for s in STATUSES}
    running = run.stopped_at is None  # or killed without a word: the journal cannot tell
    last_ts = max([t for e in run.experiments for t in (e.started_at, e.finished_at) if t] + [run.stopped_at or 0])
    end = (now or time.time()) if run.stopped_at is None else max(run.stopped_at, last_ts)
    hours = max(end - (run.started_at or end), 0.0) / 3600
    baseline = next((e.val_bpb for e in done if e.n == 0), None)
    best = run.best
    kept, previous = [], None
    for e in done:
        if e.status == "keep" and e.val_bpb is not None:
            kept.append((e.n, (e.commit or "")[:7], e.description, e.val_bpb, None if previous is None else e.val_bpb - previous))
            previous = e.val_bpb
    crashes: dict[str, list[int]] = defaultdict(list)
    for e in done:
        if e.status == "crash":
            crashes[crash_kind(e.reason)].append(e.n)
    usage = run.total_usage
    improvement = baseline - best.val_bpb if baseline is not None and best and best.val_bpb is not None else None
    return Summary(
        tag=run.tag, experiments=len(done), counts=counts,
        rates={s: counts[s] / len(done) if done else 0.0 for s in STATUSES},
        hours=hours, per_hour=len(done) / hours if hours else 0.0,
        training_share=sum(e.train_seconds or 0.0 for e in done) / (hours * 3600) if hours else 0.0,
        baseline=baseline, best=best.val_bpb if best else None, best_commit=(best.commit or "")[:7] if best else "",
        improvement=improvement, improvement_pct=100 * improvement / baseline if improvement is not None and baseline else None,
        cost_usd=usage.cost_usd,
        tokens={"input": usage.input_tokens, "output": usage.output_tokens, "cache_write_5m": usage.cache_write_5m_tokens,
                "cache_write_1h": usage.cache_write_1h_tokens, "cache_read": usage.cache_read_tokens},
        interrupted=sum(e.status == "interrupted" for e in run.experiments),
        failed_proposals=sum(e.failed_proposals for e in run.experiments),
        running=bool(running), kept=kept, crashes=dict(sorted(crashes.items(), key=lambda kv: -len(kv[1]))))


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


def format_summary(s: Summary) -> str:
    def bpb(x: float | None) -> str:
        return f"{x:.6f}" if x is not None else "-"

    lines = [
        f"run {s.tag}: {'running (or killed)' if s.running else 'stopped'}, {s.hours:.2f} h",
        f"experiments: {s.experiments} (keep {s.counts['keep']} {s.rates['keep']:.0%}, discard {s.counts['discard']} "
        f"{s.rates['discard']:.0%}, crash {s.counts['crash']} {s.rates['crash']:.0%}); interrupted {s.interrupted}; "
        f"failed proposals {s.failed_proposals}",
        f"experiments per hour: {s.per_hour:.1f}; share of wall-clock spent training: {s.training_share:.0%}",
        f"baseline val_bpb: {bpb(s.baseline)}; best: {bpb(s.best)} ({s.best_commit})"
        + (f"; improvement {s.improvement:.6f} ({s.improvement_pct:.2f}%)" if s.improvement is not None else ""),
        f"spend: ${s.cost_usd:.2f}; tokens: " + ", ".join(f"{k} {v:,}" for k, v in s.tokens.items()),
    ]
    return "\n".join(lines)


def tables_markdown(s: Summary) -> str:
    out = ["| # | commit | description | val_bpb | delta |", "|---|---|---|---|---|"]
    for n, commit, desc, bpb, delta in s.kept:
        out.append(f"| {n} | {commit} | {desc.replace('|', '/')} | {bpb:.6f} | {'' if delta is None else f'{delta:+.6f}'} |")
    out += ["", "| crash kind | count | experiments |", "|---|---|---|"]
    for kind, ns in s.crashes.items():
        out.append(f"| {kind.replace('|', '/')} | {len(ns)} | {', '.join(map(str, ns))} |")
    return "\n".join(out)


def experiments_frame(run: RunRecord) -> pd.DataFrame:
    rows = []
    for e in run.experiments:
        row = {k: v for k, v in asdict(e).items() if k not in ("summary", "usage")}
        row.update({f"summary_{k}": v for k, v in e.summary.items()})
        row.update({f"usage_{k}": v for k, v in e.usage.to_dict().items()})
        row["memory_gb"] = e.memory_gb
        rows.append(row)
    return pd.DataFrame(rows)


def plot_progress(run: RunRecord, s: Summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = run.finished
    fig, ax = plt.subplots(figsize=(12, 6.5), dpi=110)
    scored = [e for e in done if e.val_bpb is not None]
    values = [e.val_bpb for e in scored]
    if values:
        low = min(values)
        top = (s.baseline if s.baseline is not None else max(values))
        top += max((top - low) * 0.35, 0.005)
        bottom = low - max((top - low) * 0.08, 0.002)
    else:
        bottom, top = 0.0, 1.0
    ax.set_ylim(bottom, top)
    for status, color, size in (("discard", "#b0b0b0", 22), ("keep", "#2ca02c", 46)):
        pts = [(e.n, min(e.val_bpb, top)) for e in scored if e.status == status]
        if pts:
            ax.scatter(*zip(*pts), c=color, s=size, zorder=3, label=status, edgecolors="none")
    clipped = [e.n for e in scored if e.val_bpb > top]
    if clipped:
        ax.scatter(clipped, [top] * len(clipped), marker="^", c="#b0b0b0", s=30, zorder=3, clip_on=False, label="off the scale")
    crashes = [e.n for e in done if e.status == "crash"]
    if crashes:
        ax.scatter(crashes, [bottom] * len(crashes), marker="x", c="#d62728", s=30, zorder=3, clip_on=False, label="crash")
    if s.kept:
        xs = [k[0] for k in s.kept] + [max(e.n for e in done)]
        ys = [k[3] for k in s.kept] + [s.kept[-1][3]]
        ax.step(xs, ys, where="post", c="#2ca02c", lw=1.6, zorder=2, label="best so far")
        for i, (n, _, desc, bpb, _) in enumerate(s.kept):
            label = desc if len(desc) <= LABEL_CHARS else desc[: LABEL_CHARS - 1] + "…"
            ax.annotate(label, (n, bpb), xytext=(6, 10 + 16 * (i % 4)), textcoords="offset points", fontsize=7.5,
                        rotation=18, color="#1b5e20", arrowprops=dict(arrowstyle="-", color="#9ccc9c", lw=0.6))
    title = f"autoresearch run {s.tag}: {s.experiments} experiments, {s.counts['keep']} kept"
    if s.improvement is not None:
        title += f"; val_bpb {s.baseline:.4f} → {s.best:.4f} ({-s.improvement_pct:+.2f}%)"
    ax.set_title(title)
    ax.set_xlabel("experiment")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.grid(alpha=0.25)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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
        ax.set_xlabel(xlabel)
        ax.set_ylabel("best val_bpb so far")
        ax.grid(alpha=0.25)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def latest_tag(repo: Path) -> str | None:
    journals = list((state_dir(repo) / "runs").glob("*/journal.jsonl"))
    started = []
    for j in journals:
        events = [e for e in read_events(j) if e.get("event") == "run_started"]
        if events:
            started.append((events[-1]["ts"], j.parent.name))
    return max(started)[1] if started else None


def report_command(repo: Path, tag: str | None, out: Path | None, compare: list[str]) -> int:
    if compare:
        runs = []
        for t in compare:
            run = load_run(repo, t)
            if not run.experiments:
                raise SetupError(f"no run tagged {t} in .autoresearch/runs")
            runs.append(run)
        out = out or state_dir(repo) / "compare"
        out.mkdir(parents=True, exist_ok=True)
        plot_compare(runs, out / "compare.png")
        print("tag\texperiments\tbest\timprovement\tcost_usd")
        for run in runs:
            s = summarize(run)
            print(f"{s.tag}\t{s.experiments}\t{s.best if s.best is not None else '-'}\t"
                  f"{s.improvement if s.improvement is not None else '-'}\t{s.cost_usd:.2f}")
        print(f"wrote {out / 'compare.png'}")
        return 0
    tag = tag or latest_tag(repo)
    if tag is None:
        raise SetupError("no run found in .autoresearch/runs: start one with `autoresearch start --tag NAME`")
    run = load_run(repo, tag)
    if not run.experiments:
        raise SetupError(f"run {tag} has no experiments yet: its journal is {run_dir(repo, tag) / 'journal.jsonl'}")
    out = out or run_dir(repo, tag) / "report"
    out.mkdir(parents=True, exist_ok=True)
    s = summarize(run)
    text = format_summary(s)
    print(text)
    print("\nkept improvements:\n" + "\n".join(f"  #{n} {c} {b:.6f} {'' if d is None else f'{d:+.6f}'}  {desc}" for n, c, desc, b, d in s.kept))
    print("crashes by reason:\n" + "\n".join(f"  {len(ns):3d}  {kind}  (#{', #'.join(map(str, ns))})" for kind, ns in s.crashes.items()))
    plot_progress(run, s, out / "progress.png")
    experiments_frame(run).to_csv(out / "experiments.csv", index=False)
    (out / "report.md").write_text(f"# autoresearch run `{tag}`\n\n```\n{text}\n```\n\n![progress](progress.png)\n\n"
                                   f"## Kept improvements and crashes\n\n{tables_markdown(s)}\n", encoding="utf-8")
    print(f"\nwrote {out / 'progress.png'}, {out / 'report.md'}, {out / 'experiments.csv'}")
    return 0
