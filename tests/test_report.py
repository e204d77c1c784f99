"""The morning report from a journal of a known run: every figure of the summary, the files."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loop.config import RATE_AFTER_EXPERIMENTS
from loop.errors import UsageError
from loop.journal import JOURNAL_NAME, fold, read_events, read_events_checked, run_dir
from loop.report import (
    LABEL_CHARS,
    PlotLayout,
    crash_kind,
    experiments_frame,
    holdout_gap,
    plot_progress,
    read_run,
    report_command,
    report_markdown,
    summarize,
)

T0 = 1_700_000_000.0
CHECKOUT = Path(__file__).resolve().parents[1]


def cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The CLI as a subprocess, running this checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "loop.cli", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          check=False)


def journal_events(tag: str, experiments: list[tuple], stopped: bool = True) -> list[dict]:
    """experiments: (status, val_bpb, description, reason, cost_usd, input_tokens, train_seconds)."""
    events: list[dict] = [{"event": "run_started", "ts": T0, "tag": tag}]
    for n, (status, bpb, desc, reason, cost, tokens, train_s) in enumerate(experiments):
        start = T0 + n * 600  # one experiment every ten minutes
        usage = {"input_tokens": tokens, "output_tokens": tokens // 10, "cache_read_tokens": 5 * tokens,
                 "cost_usd": cost}
        events += [
            {"event": "proposing", "ts": start, "n": n},
            {"event": "proposed", "ts": start + 30, "n": n, "description": desc, "usage": usage},
            {"event": "committed", "ts": start + 31, "n": n, "commit": f"{n:07d}" + "a" * 33},
            {"event": "evaluated", "ts": start + 500, "n": n, "val_bpb": bpb, "reason": reason,
             "train_seconds": train_s, "peak_vram_mb": 40960.0},
        ]
        if status is not None:
            events += [{"event": "decided", "ts": start + 501, "n": n, "status": status, "reason": reason},
                       {"event": "recorded", "ts": start + 502, "n": n}]
    if stopped:
        events.append({"event": "run_stopped", "ts": T0 + len(experiments) * 600, "reason": "stop requested"})
    return events


def write_events(repo: Path, tag: str, events: list[dict]) -> Path:
    path = run_dir(repo, tag) / JOURNAL_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def write_journal(repo: Path, tag: str, experiments: list[tuple], stopped: bool = True) -> Path:
    return write_events(repo, tag, journal_events(tag, experiments, stopped))


KNOWN = [
    ("keep", 1.0, "baseline", "", 0.0, 0, 300.0),
    ("discard", 1.1, "wider MLP", "", 0.5, 1000, 300.0),
    ("keep", 0.95, "higher LR", "", 0.25, 2000, 300.0),
    ("crash", None, "deeper", "exit 1: torch.OutOfMemoryError: CUDA out of memory", 0.25, 1000, 120.0),
    ("crash", None, "peek", "guard: train.py:12: mentions 'val.txt': reads the validation data", 0.0, 0, 0.0),
    ("keep", 0.9, "muon for embeddings", "", 1.0, 3000, 300.0),
    ("crash", None, "fp8", "exit 1: torch.OutOfMemoryError: out of memory again", 0.0, 0, 60.0),
    ("discard", 0.92, "bigger batch", "", 0.0, 0, 300.0),
]


def test_summary_figures(tmp_path: Path) -> None:
    write_journal(tmp_path, "known", KNOWN)
    s = summarize(fold(read_events(run_dir(tmp_path, "known") / JOURNAL_NAME)))
    assert s.experiments == 7 and s.counts == {"keep": 2, "discard": 2, "crash": 3}  # besides the baseline
    assert s.rates["keep"] == pytest.approx(2 / 7) and s.rates["crash"] == pytest.approx(3 / 7)
    assert s.hours == pytest.approx(8 * 600 / 3600)  # run_started to run_stopped
    assert s.per_hour == pytest.approx(7 / (8 * 600 / 3600))  # as status: the baseline not counted
    assert s.training_share == pytest.approx((300 * 5 + 120 + 60) / (8 * 600))
    assert s.baseline == 1.0 and s.best == 0.9 and s.best_commit == "0000005"
    assert s.improvement == pytest.approx(0.1) and s.improvement_pct == pytest.approx(10.0)
    assert s.cost_usd == pytest.approx(2.0)
    assert s.tokens == {"input": 7000, "output": 700, "cache_write_5m": 0, "cache_write_1h": 0, "cache_read": 35000}
    assert [(k[0], k[2]) for k in s.kept] == [(0, "baseline"), (2, "higher LR"), (5, "muon for embeddings")]
    assert s.kept[0][4] is None and s.kept[1][4] == pytest.approx(-0.05) and s.kept[2][4] == pytest.approx(-0.05)
    assert s.crashes == {"torch.OutOfMemoryError": [3, 6], "guard: mentions 'val.txt'": [4]}
    assert not s.running


def test_crash_kinds() -> None:
    assert crash_kind("timeout after 600s") == "timeout"
    assert crash_kind("over budget: reported 331.2s > 315.0s") == "over budget"
    assert crash_kind("eval: model is not causal: logits changed") == "eval"
    assert crash_kind("exit 1: SyntaxError: invalid syntax") == "SyntaxError"


def test_report_command_writes_files(tmp_path: Path) -> None:
    write_journal(tmp_path, "known", KNOWN)
    done = cli(["report"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "experiments: 7 besides the baseline (keep 2 29%, discard 2 29%, crash 3 43%)" in done.stdout
    assert "improvement 0.100000 (10.00%)" in done.stdout and "spend: $2.00" in done.stdout
    out = run_dir(tmp_path, "known") / "report"
    assert (out / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "| 5 | 0000005 | muon for embeddings | 0.900000 | -0.050000 |" in md
    assert "| torch.OutOfMemoryError | 2 | 3, 6 |" in md
    rows = list(csv.DictReader(open(out / "experiments.csv")))
    assert len(rows) == 8 and rows[3]["reason"].startswith("exit 1") and rows[2]["usage_input_tokens"] == "2000"


def test_growing_torn_and_crashed_runs(tmp_path: Path) -> None:
    path = write_journal(tmp_path, "live", KNOWN[:3] + [(None, 0.97, "running one", "", 0.1, 10, 300.0)], stopped=False)
    with open(path, "a") as f:
        f.write('{"event": "decided", "n": 3, "sta')  # the daemon is mid-write
    s = summarize(fold(read_events(path)), now=T0 + 3 * 600 + 100)
    assert s.running and s.experiments == 2 and s.hours == pytest.approx((3 * 600 + 100) / 3600)  # up to now
    done = cli(["report", "--tag", "live"], cwd=tmp_path)
    assert done.returncode == 0 and "running (or killed)" in done.stdout


def test_compare_and_no_run(tmp_path: Path) -> None:
    write_journal(tmp_path, "a", KNOWN)
    write_journal(tmp_path, "b", KNOWN[:4])
    done = cli(["report", "--compare", "a", "b", "--out", str(tmp_path / "cmp")], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cmp" / "compare.png").exists() and "a\t7\t0.900000\t0.100000\t2.00" in done.stdout
    typo = cli(["report", "--tag", "aa"], cwd=tmp_path)  # said as status and show say it, not "no experiments yet"
    assert typo.returncode == 3 and "no run tagged aa in .autoresearch/runs" in typo.stderr, typo.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = cli(["report"], cwd=empty)
    assert none.returncode == 3 and "is not a git repository" in none.stderr  # and holds no runs


def render(repo: Path, tag: str, x_axis: str = "experiment") -> PlotLayout:
    view = read_run(repo, tag)
    return plot_progress(view, summarize(view.run), repo / f"{tag}-{x_axis}.png", x_axis)


def test_crash_markers_sit_on_their_own_strip(tmp_path: Path) -> None:
    write_journal(tmp_path, "known", KNOWN)
    layout = render(tmp_path, "known")
    crashed = [n for n, (status, *_) in enumerate(KNOWN) if status == "crash"]
    assert [n for n, _, _ in layout.crashes] == crashed
    assert [x for _, x, _ in layout.crashes] == crashed  # each at its own experiment
    # Under the score axes, not on them, where a marker below the best line would read as a better score.
    assert all(height < 0 for _, _, height in layout.crashes) and layout.crash_strip_below
    assert "crash (no score)" in layout.legend
    assert (tmp_path / "known-experiment.png").read_bytes()[:4] == b"\x89PNG"


def test_labels_stay_inside_the_axes(tmp_path: Path) -> None:
    # Kept changes at both edges, with descriptions long enough to leave the plot if placed blindly.
    long = "a description long enough to be cut at the label limit"
    kept = [("keep", 1.0 - 0.01 * n, f"{long} {n}", "", 0.0, 0, 300.0) for n in range(6)]
    write_journal(tmp_path, "edges", kept + [("discard", 1.2, "far worse", "", 0.0, 0, 300.0)]
                  + [("keep", 0.9, long, "", 0.0, 0, 300.0)])
    layout = render(tmp_path, "edges")
    assert [n for n, _, _ in layout.labels] == [0, 1, 2, 3, 4, 5, 7] and not layout.unlabelled
    assert_clear(layout)
    assert all(len(text) <= LABEL_CHARS for _, text, _ in layout.labels)


def test_a_result_off_the_scale_is_not_under_the_legend(tmp_path: Path) -> None:
    """The latest result far worse than the rest: its marker sits on the top edge at the right,
    where the legend must not be; and a short run's axis counts whole experiments."""
    write_journal(tmp_path, "late", [("keep", 1.0, "baseline", "", 0.0, 0, 300.0), ("keep", 0.98, "better", "", 0.0, 0, 300.0),
                                     ("discard", 0.99, "no", "", 0.0, 0, 300.0), ("discard", 9.0, "far worse", "", 0.0, 0, 300.0)])
    layout = render(tmp_path, "late")
    x0, y0, x1, y1 = layout.legend_box
    assert len(layout.off_scale) == 1 and not any(x0 <= x <= x1 and y0 <= y <= y1 for x, y in layout.off_scale)
    assert layout.xticks and all(t == int(t) for t in layout.xticks)  # experiments, not quarters of one


def assert_clear(layout: PlotLayout) -> None:
    """Every label inside the score axes, none over another."""
    boxes = [box for _, _, box in layout.labels]
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, (x0, y0, x1, y1)
    for i, (ax0, ay0, ax1, ay1) in enumerate(boxes):
        for bx0, by0, bx1, by1 in boxes[i + 1:]:
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0


def test_crowded_labels_give_way_biggest_gains_first(tmp_path: Path) -> None:
    gains = [0.001 * (1 + n % 7) for n in range(80)]  # many kept changes: not all can be labelled
    gains[39] = 0.02  # experiment 40 makes the largest gain
    values = [1.0 - sum(gains[:n]) for n in range(80)]
    write_journal(tmp_path, "crowd", [("keep", v, f"change {n} of the schedule", "", 0.0, 0, 300.0)
                                      for n, v in enumerate(values)])
    layout = render(tmp_path, "crowd")
    assert_clear(layout)
    labelled = {n for n, _, _ in layout.labels}
    assert layout.unlabelled and labelled | set(layout.unlabelled) == set(range(80)) and 0 in labelled
    assert 40 in labelled  # the baseline and the largest gain are labelled first, so they always find room
    mean_gain = [sum(gains[n - 1] for n in ns) / len(ns) for ns in (labelled - {0}, layout.unlabelled)]
    assert mean_gain[0] > mean_gain[1]


def test_entropy_floor_line_or_note(tmp_path: Path) -> None:
    events = journal_events("floor", KNOWN)
    values = [bpb for _, bpb, *_ in KNOWN if bpb is not None]
    span = KNOWN[0][1] - min(values)  # the axis spans the baseline down to the best
    events[0]["floor"] = min(values) - span / 2  # within reach: drawn, and the axis reaches down to it
    write_events(tmp_path, "floor", events)
    layout = render(tmp_path, "floor")
    assert layout.floor_drawn == "line" and layout.ylim[0] < events[0]["floor"] < layout.ylim[1]
    events[0]["floor"] = min(values) - 10 * span  # too far: noted, the scores keep the axis
    write_events(tmp_path, "floor", events)
    far = render(tmp_path, "floor")
    assert far.floor_drawn == "noted" and far.ylim[0] > events[0]["floor"]
    assert any("below the axis" in name for name in far.legend)
    write_journal(tmp_path, "none", KNOWN)
    assert render(tmp_path, "none").floor_drawn == ""


def test_hours_axis_shows_a_stop_and_a_kill_as_gaps(tmp_path: Path) -> None:
    events = journal_events("gaps", KNOWN[:3])  # ends with run_stopped at T0 + 1800
    stopped_at = events[-1]["ts"]
    resumed_at = stopped_at + 2 * 3600
    later = journal_events("gaps", KNOWN[:5], stopped=False)
    shifted = [{**e, "ts": e["ts"] + 2 * 3600} for e in later if e.get("n", -1) >= 3]
    killed_at = shifted[-1]["ts"]  # no run_stopped: the daemon was killed
    events += [{"event": "run_resumed", "ts": resumed_at, "tag": "gaps"}, *shifted,
               {"event": "run_resumed", "ts": killed_at + 3600, "tag": "gaps"}]
    write_events(tmp_path, "gaps", events)
    layout = render(tmp_path, "gaps", "hours")
    expected = [((stopped_at - T0) / 3600, (resumed_at - T0) / 3600),
                ((killed_at - T0) / 3600, (killed_at + 3600 - T0) / 3600)]
    assert [x for span in layout.pauses for x in span] == pytest.approx([x for span in expected for x in span])
    assert layout.best_line[-1][0] > expected[0][1]  # the experiments after the stop sit after the gap
    by_number = render(tmp_path, "gaps", "experiment")
    assert by_number.pauses == [(2.5, 2.5)]  # a line where the run resumed; the kill resumed no experiment
    with pytest.raises(UsageError, match="--x 'minutes'"):
        report_command(tmp_path, "gaps", None, [], "minutes")


def test_garbled_line_is_reported_a_torn_tail_is_not(tmp_path: Path) -> None:
    path = write_journal(tmp_path, "torn", KNOWN, stopped=False)
    lines = path.read_text().splitlines(keepends=True)
    garbled = 7
    lines[garbled - 1] = '{"event": "evaluated", "n": 1, "val_b\n'
    lines.insert(9, '["not", "an", "event"]\n')
    path.write_text("".join(lines) + '{"event": "proposing", "n": 8, "t')  # and a kill mid-write at the end
    events, problems = read_events_checked(path)
    assert [p.split(":")[0] for p in problems] == [f"journal.jsonl line {garbled}", "journal.jsonl line 10"]
    assert len(events) == len(lines) - 2
    done = cli(["report", "--tag", "torn"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"journal.jsonl line {garbled}: garbled, skipped" in done.stderr and done.stderr.count("garbled") == 2
    md = (run_dir(tmp_path, "torn") / "report" / "report.md").read_text()
    assert "## Journal lines skipped" in md and f"line {garbled}: garbled" in md


def holdout_events(tag: str, holdout_drift: float) -> list[dict]:
    """KNOWN with a holdout score beside val: it trails val by `holdout_drift` per kept step."""
    events = journal_events(tag, KNOWN)
    kept_so_far = 0
    for ev in events:
        if ev["event"] == "evaluated" and ev["val_bpb"] is not None:
            if KNOWN[ev["n"]][0] == "keep":
                kept_so_far += 1
            ev["scores"] = {"val": ev["val_bpb"], "holdout": ev["val_bpb"] + 0.01 + holdout_drift * kept_so_far}
    return events


def test_holdout_line_and_gap_warning(tmp_path: Path) -> None:
    write_events(tmp_path, "steady", holdout_events("steady", 0.0))
    view = read_run(tmp_path, "steady")
    gap = holdout_gap(view)
    assert gap is not None and gap.growth == pytest.approx(0.0) and not gap.warns
    layout = render(tmp_path, "steady")
    kept = [n for n, (status, *_) in enumerate(KNOWN) if status == "keep"]
    assert [y for _, y in layout.holdout_line] == pytest.approx([KNOWN[n][1] + 0.01 for n in kept])
    assert "kept line on holdout" in layout.legend
    val_gain = KNOWN[kept[0]][1] - KNOWN[kept[-1]][1]
    drift = val_gain / (len(kept) - 1)  # the holdout keeps none of the val gain
    write_events(tmp_path, "drifting", holdout_events("drifting", drift))
    gap = holdout_gap(read_run(tmp_path, "drifting"))
    assert gap is not None and gap.growth == pytest.approx(val_gain) and gap.warns
    done = cli(["report", "--tag", "drifting"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    md = (run_dir(tmp_path, "drifting") / "report" / "report.md").read_text()
    assert "## Holdout" in md and "does not show on the holdout" in md
    assert cli(["report", "--tag", "steady"], cwd=tmp_path).returncode == 0
    assert "## Holdout" not in (run_dir(tmp_path, "steady") / "report" / "report.md").read_text()


def test_unknown_events_fields_and_repeats(tmp_path: Path) -> None:
    events = journal_events("future", KNOWN)
    events.insert(1, {"event": "cluster_joined", "ts": T0, "host": "node-3", "hardware": {"gpus": ["H100"]}})
    for i in reversed([i for i, ev in enumerate(events) if ev["event"] == "evaluated"]):
        ran = {"ts": events[i]["ts"] - 400, "n": events[i]["n"], "run": 0}
        events[i:i] = [{"event": "running", **ran, "seed": 1, "unknown_field": True},
                       {"event": "started", **ran, "slot": "gpu1", "device": "cuda:1", "host": "node-3"}]
    # Experiment 5 was rerun with a second seed: it is scored by the mean of its runs.
    second = next(i for i, ev in enumerate(events) if ev["event"] == "evaluated" and ev["n"] == 5)
    rerun = {**events[second], "run": 1, "val_bpb": None, "scores": {"val": 0.88}}
    events[second + 1:second + 1] = [
        {"event": "measured_something_new", "ts": T0, "n": 5, "whatever": [1, 2]},
        {"event": "running", "ts": T0, "n": 5, "run": 1, "seed": 2},
        {"event": "started", "ts": T0, "n": 5, "run": 1, "slot": "gpu0", "device": "cuda:0", "host": "node-3"},
        rerun]
    write_events(tmp_path, "future", events)
    view = read_run(tmp_path, "future")
    assert not view.problems and len(view.repeats[5]) == 2
    s = summarize(view.run)
    assert s.best == pytest.approx((0.9 + 0.88) / 2) and s.experiments == len(KNOWN) - 1
    frame = experiments_frame(view)
    assert frame.loc[5, "runs"] == 2 and frame.loc[5, "hosts"] == "node-3 node-3"
    assert [(r.seed, r.slot) for r in view.repeats[5]] == [(1, "gpu1"), (2, "gpu0")]
    done = cli(["report", "--tag", "future"], cwd=tmp_path)
    assert done.returncode == 0 and not done.stderr, done.stderr


def test_a_run_without_crashes_or_gains(tmp_path: Path) -> None:
    """No crash: no header-only crash table. No gain: the title says so rather than `a → a (-0.00%)`."""
    write_journal(tmp_path, "flat", [("keep", 5.3301, "baseline", "", 0.0, 0, 300.0),
                                     ("discard", 5.4, "wider MLP", "", 0.5, 1000, 300.0)])
    done = cli(["report", "--tag", "flat"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    md = (run_dir(tmp_path, "flat") / "report" / "report.md").read_text()
    assert "| crash kind |" not in md and "Crashes: none." in md
    tried = md[md.index("## Every experiment"):]  # what was tried, the discards too
    assert "| 1 | discard | 5.400000 |" in tried and "wider MLP" in tried, tried
    assert render(tmp_path, "flat").title == "autoresearch run flat: 1 experiment besides the baseline, 0 kept; val_bpb 5.3301, no improvement"
    write_journal(tmp_path, "tiny", [("keep", 5.3301, "baseline", "", 0.0, 0, 300.0),
                                     ("keep", 5.33008, "a hair better", "", 0.0, 0, 300.0)])
    assert render(tmp_path, "tiny").title.endswith("val_bpb 5.330100 → 5.330080 (-0.00038%)")  # a gain, however small
    write_journal(tmp_path, "known", KNOWN)
    assert render(tmp_path, "known").title.endswith("val_bpb 1.0000 → 0.9000 (-10.00%)")
    assert "| torch.OutOfMemoryError | 2 | 3, 6 |" in report_markdown(read_run(tmp_path, "known"),
                                                                      summarize(read_run(tmp_path, "known").run), "")


def test_no_hourly_rate_from_a_few_seconds(tmp_path: Path) -> None:
    """Experiments of half a second each: the rate waits for status's rule (enough time or experiments)."""
    fast = [{**e, "ts": T0 + (e["ts"] - T0) / 1000} for e in journal_events("fast", KNOWN[:4])]
    write_events(tmp_path, "fast", fast)
    s = summarize(read_run(tmp_path, "fast").run)
    assert s.per_hour is None
    done = cli(["report", "--tag", "fast"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "experiments per hour: too early to say (3 in 2s)" in done.stdout, done.stdout
    # As many decided experiments as status waits for (baseline not counted): the rate is shown.
    many = [{**e, "ts": T0 + (e["ts"] - T0) / 1000} for e in journal_events("many", KNOWN[:RATE_AFTER_EXPERIMENTS + 1])]
    write_events(tmp_path, "many", many)
    assert summarize(read_run(tmp_path, "many").run).per_hour == pytest.approx(5 / (6 * 0.6 / 3600))


def test_report_says_where_it_wrote(tmp_path: Path) -> None:
    write_journal(tmp_path, "known", KNOWN)
    done = cli(["report"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    folder = run_dir(tmp_path, "known") / "report"
    assert done.stdout.rstrip().splitlines()[-1] == (f"report written to {folder}: progress.png, report.md, "
                                                     "experiments.csv")
    helped = cli(["report", "--help"], cwd=tmp_path).stdout
    assert "(default: .autoresearch/runs/TAG/report)" in " ".join(helped.split())  # where it writes
    elsewhere = cli(["report", "--out", str(tmp_path / "mine")], cwd=tmp_path)
    assert elsewhere.stdout.rstrip().splitlines()[-1].startswith(f"report written to {tmp_path / 'mine'}: ")
