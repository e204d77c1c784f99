"""`autoresearch status [--tag T]`: what the daemon is doing now and how the run goes, truthfully.

The live part comes from the daemon's state file (refreshed every second while it runs); the
counts, the best and the spend from the journal, which is the source of truth.
"""
from __future__ import annotations

import time
from pathlib import Path
from statistics import fmean

from loop import gitops
from loop import target as targets
from loop.commands.common import last_tag, lock_path, read_json, state_path
from loop.config import BEST_CRASHES, RATE_AFTER_EXPERIMENTS, RATE_AFTER_S
from loop.errors import SetupError
from loop.journal import JOURNAL_NAME, STATUSES, load_run, run_dir, unreproduced_warnings
from loop.lock import read_holder
from loop.policy import Policy, measured_noise, repeats_differ

ROUGH_BELOW_DEGREES = 4  # a standard deviation from fewer degrees of freedom is off by half or more


def status(repo: Path, tag: str | None = None) -> int:
    root = gitops.Git(repo).root
    holder = read_holder(lock_path(root))
    tag = tag or (holder["tag"] if holder else last_tag(root))
    if tag is None:
        print("not running; no run yet: `autoresearch start --tag NAME`")
        return 0
    if not (run_dir(root, tag) / JOURNAL_NAME).exists() and not (holder and holder.get("tag") == tag):
        if failed := sorted(run_dir(root, tag).parent.glob(f"{tag}.failed-*")):
            print(f"not running: run {tag}'s baseline crashed, so the tag was given back; its logs are in "
                  f"{failed[-1].relative_to(root) / '0000'}; `autoresearch start --tag {tag}` starts it again")
            return 0
        raise SetupError(f"no run tagged {tag} here: `autoresearch runs` lists the runs")
    run = load_run(root, tag)
    live = state_path(root)
    if declared := (run.meta.get("config") or {}).get("target"):  # a declared target's daemon: its own lock and view
        target = targets.of_config(root, declared)
        holder, live = read_holder(targets.lock_file(root, target)), targets.state_file(root, target)
    running = holder is not None and holder.get("tag") == tag
    pid = holder.get("pid") if holder is not None else None
    print(f"{'running' if running else 'not running'} (tag {tag}{', pid ' + str(pid) if running else ''})")
    if running:
        _live(read_json(live), tag)
    elif run.stop_reason:
        print(f"stopped: {run.stop_reason}")
    for problem in run.problems:
        print(f"warning: {problem}")
    done = run.finished
    experiments = [e for e in done if e.n > 0]  # as --max-experiments counts them
    counts = {s: sum(e.status == s for e in experiments) for s in STATUSES}
    print(f"experiments: {len(experiments)} besides the baseline (keep {counts['keep']}, discard {counts['discard']}, "
          f"crash {counts['crash']})")
    metric = targets.metric_of(run.meta)
    baseline = next((e for e in done if e.n == 0), None)
    if baseline and baseline.val_bpb is not None:
        print(f"baseline {metric.name}: {metric.text(baseline.val_bpb)} ({(baseline.commit or '')[:7]})")
    if run.best:
        print(f"best {metric.name}: {metric.text(run.best.val_bpb)} ({(run.best.commit or '')[:7]}: {run.best.description})")
        if max(run.best.scores_by_run(), default=-1) >= max(run.best.decided_through, 1):  # run again since
            scores = Policy.comparable(run.best.scores_by_run(), run.best.decided_through, run.best.kind)
            print(f"  the best's mean over {len(scores)} of its runs, which results are compared with: "
                  f"{metric.text(fmean(scores))}")
    for line in unreproduced_warnings(done, BEST_CRASHES):
        print(line)
    baseline = run.by_n.get(0)
    learned_nothing = targets.baseline_learned_nothing(metric, baseline)
    if learned_nothing and baseline is not None:
        budget = (run.meta.get("config") or {}).get("budget")
        print(targets.learned_nothing_warning(metric, baseline.val_bpb, baseline.summary,
                                              float(budget) if isinstance(budget, (int, float)) else 0.0))
    noise = measured_noise((e.scores() for e in done if e.status in ("keep", "discard")),
                           repeats_differ(baseline.scores() if baseline else [], learned_nothing))
    if noise.sigma is not None:
        rough = "; rough until more runs repeat a commit" if noise.degrees < ROUGH_BELOW_DEGREES else ""
        print(f"run-to-run noise: {noise} (a standard deviation{rough})")
    if run.started_at:
        elapsed = (time.time() if running else (run.stopped_at or time.time())) - run.started_at
        if elapsed >= RATE_AFTER_S or len(experiments) >= RATE_AFTER_EXPERIMENTS:
            print(f"experiments per hour: {len(experiments) / (elapsed / 3600):.1f}")
        else:
            print(f"experiments per hour: too early to say ({len(experiments)} in {elapsed:.0f}s)")
    usage = run.total_usage
    tokens_in = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_5m_tokens + usage.cache_write_1h_tokens
    print(f"spend: ${usage.cost_usd:.2f} ({tokens_in:,} input, {usage.output_tokens:,} output tokens)")
    return 0


def _live(state: dict, tag: str) -> None:
    if state.get("tag") != tag:
        return
    now = time.time()
    budget = float(state.get("budget") or 0)
    if state.get("graceful_stop") or state.get("stopping"):
        print(f"stopping: {state.get('stopping') or 'stop requested'}; the experiments in flight finish first")
    for slot in state.get("slots", []):
        device = f" (GPU {slot['device']})" if slot.get("device") is not None else ""
        busy = f", busy {slot.get('busy_share', 0):.0%}" if state.get("first_dispatch") else ""
        if slot.get("n") is None:
            print(f"slot {slot['slot']}{device}: idle{busy}")
            continue
        loss = f", loss {slot['loss']}" if slot.get("loss") else ""
        run = f" (run {slot['run'] + 1})" if slot.get("run") else ""
        what = "the baseline" if slot["n"] == 0 else f"experiment {slot['n']}"
        # its clock counts start-up (imports, compiling) too, which the budget does not
        print(f"slot {slot['slot']}{device}: {what}{run} training for {now - slot['since']:.0f}s "
              f"(budget {budget:.0f}s, plus start-up){loss}{busy}")
    for ev in state.get("evaluating", []):
        print(f"experiment {ev['n']}: evaluating for {now - ev['since']:.0f}s")
    for ev in state.get("holdouts", []):
        print(f"experiment {ev['n']}: scoring the holdout for {now - ev['since']:.0f}s "
              f"(kept; the holdout decides nothing)")
    if state.get("proposing"):
        waits = f", waiting on {state['agent_waits_on']}" if state.get("agent_waits_on") else ""
        print(f"agent proposing: experiment(s) {', '.join(str(n) for n in state['proposing'])}{waits}")
    if state.get("waiting"):
        print(f"waiting for the agent for {now - float(state.get('waiting_since') or now):.0f}s: {state['waiting']}")
