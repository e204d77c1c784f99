"""`autoresearch show N [--tag T]`: one experiment in full, from its journal and its folder.

What it tried (description, hypothesis), what came of it (status, reason, score, the best it had
to beat), where the time went, its diff and the tail of its logs. The run defaults to the last
one started in this repository.
"""
from __future__ import annotations

from pathlib import Path

import git

from loop import gitops
from loop.errors import SetupError, UsageError
from loop.journal import ExperimentRecord, experiment_dir, run_dir, state_dir
from loop.report import RunView, latest_tag, read_run, warn
from loop.target import metric_of

LAST_TAG = "last_tag"  # written by `start`: the tag of the run started last
LOG_TAIL_LINES = 20
DIFF_LINES = 200  # a longer diff is cut; its file holds it all
# Logs whose tails are shown, where the experiment has them: a declared target's build, the training
# run, and the evaluator: eval.log for a declared target, eval-val.log for the builtin one (its
# trusted scorer, which is what decided the score).
TAILED = ("build.log", "train.log", "eval.log", "eval-val.log")
EVALUATOR_LOGS = ("eval-val.log", "eval.log")
# Any other log (eval-main.log and eval-reference.log: the model processes', written by the edited
# code after it had seen validation text; eval-holdout.log) is only named, not printed.


def default_tag(repo: Path) -> str | None:
    path = state_dir(repo) / LAST_TAG
    if path.exists() and (tag := path.read_text(encoding="utf-8").strip()):
        return tag
    return latest_tag(repo)


def show_command(repo: Path, number: int, tag: str | None) -> int:
    tag = tag or default_tag(repo)
    if tag is None:
        raise SetupError("no run found in .autoresearch/runs: start one with `autoresearch start --tag NAME`")
    if not (run_dir(repo, tag) / "journal.jsonl").exists():
        raise SetupError(f"no run tagged {tag} in .autoresearch/runs: `autoresearch runs` lists them")
    view = read_run(repo, tag)
    warn(view.problems, tag)
    rec = next((e for e in view.run.experiments if e.n == number), None)
    if rec is None:
        numbers = [e.n for e in view.run.experiments]
        known = f"it has {min(numbers)} to {max(numbers)}" if numbers else "it has none yet"
        raise UsageError(f"run {tag} has no experiment {number} ({known}): give one of those, or --tag another run")
    print("\n".join(describe(view, rec)))
    folder = experiment_dir(repo, tag, number)
    print("\n".join(diff_section(repo, folder / "diff.patch", rec)))
    print("\n".join(log_sections(folder)))
    return 0


def diff_section(repo: Path, patch: Path, rec: ExperimentRecord) -> list[str]:
    """diff.patch, or, when it holds nothing, the commit against its parent from git: the daemon writes
    only train.py's diff there, which is empty for a declared target's commit to its own files."""
    section = file_section(patch, DIFF_LINES, head=True)
    if patch.exists() and patch.stat().st_size and patch.read_text(encoding="utf-8", errors="replace").strip():
        return section
    if rec.commit and rec.commit == rec.parent:  # the baseline: the tree as it was
        return [f"--- {patch.name}: none (the baseline changes nothing)"]
    if not rec.commit or not rec.parent:  # never committed: nothing to diff
        return section
    try:
        repository = gitops.Git(repo)
        commit, parent = repository.resolve(rec.commit), repository.resolve(rec.parent)
        if commit is None or parent is None:
            return [*section, f"(git here has no commit {rec.commit[:12]} or {rec.parent[:12]} to diff)"]
        patch_bytes = repository.diff(parent, commit, relpath=":/")  # ":/": the whole tree, wherever git runs
    except (SetupError, git.GitCommandError) as e:  # not a git checkout, or git failed: say so, show the rest
        return [*section, f"(no diff from git either: {' '.join(str(e).split())[:200]})"]
    lines = patch_bytes.decode("utf-8", errors="replace").splitlines()
    if not lines:
        return section
    head = f"--- git diff {parent[:12]} {commit[:12]} (diff.patch {'is empty' if patch.exists() else 'is missing'})"
    if len(lines) > DIFF_LINES:
        return [f"{head} (first {DIFF_LINES} of {len(lines)} lines)", *lines[:DIFF_LINES]]
    return [head, *lines]


def log_sections(folder: Path) -> list[str]:
    """The tails of the logs in TAILED that the folder has (train.log and the evaluator's said to be
    missing when they are), then the names of the others."""
    lines: list[str] = []
    for name in TAILED:
        if (folder / name).exists() or name == "train.log":
            lines += file_section(folder / name, LOG_TAIL_LINES, head=False)
    if not any((folder / name).exists() for name in EVALUATOR_LOGS):
        lines += file_section(folder / EVALUATOR_LOGS[0], LOG_TAIL_LINES, head=False)
    others = sorted(p.name for p in folder.glob("*.log") if p.name not in TAILED) if folder.is_dir() else []
    if others:
        lines.append(f"--- other logs in {folder}: {', '.join(others)}")
    return lines


def describe(view: RunView, rec: ExperimentRecord) -> list[str]:
    """The experiment's record, one fact a line."""
    metric = metric_of(view.run.meta)
    bpb = metric.text

    def seconds(x: float | None) -> str:
        return f"{x:.0f}s" if x is not None else "-"

    status = rec.status or f"in progress ({rec.phase})"
    lines = [f"experiment {rec.n} of run {view.tag}: {status}",
             f"description: {' '.join(rec.description.split()) or '-'}",
             f"hypothesis: {' '.join(rec.hypothesis.split()) or '-'}",
             f"reason: {rec.reason or '-'}"]
    score = f"{metric.name}: {bpb(rec.val_bpb)}; best before: {bpb(rec.best_before)}"
    if rec.val_bpb is not None and rec.best_before is not None:
        score += f" ({metric.change(rec.val_bpb, rec.best_before)})"
    if (holdout := view.holdout(rec.n)) is not None:
        score += f"; holdout: {bpb(holdout)}"
    lines.append(score)
    repeats = view.repeats.get(rec.n, [])
    if len(repeats) > 1 or any(r.seed is not None or r.device is not None for r in repeats):
        for i, r in enumerate(repeats, start=1):
            where = " ".join(f"{k} {v}" for k, v in (("seed", r.seed), ("slot", r.slot), ("device", r.device),
                                                      ("host", r.host)) if v is not None)
            hold = f", holdout {bpb(r.holdout)}" if r.holdout is not None else ""
            lines.append(f"  run {i}: val {bpb(r.val)}{hold}{'; ' + where if where else ''}")
    lines.append(f"commit: {(rec.commit or '-')[:12]} (parent {(rec.parent or '-')[:12]})")
    lines.append(f"times: agent {seconds(rec.agent_seconds)}, train {seconds(rec.train_seconds)}, "
                 f"eval {seconds(rec.eval_seconds)}, wall {seconds(rec.wall_seconds)}")
    if rec.usage.cost_usd or rec.usage.input_tokens:
        lines.append(f"agent spend: ${rec.usage.cost_usd:.2f} ({rec.usage.input_tokens:,} input, "
                     f"{rec.usage.output_tokens:,} output tokens)")
    return lines


def file_section(path: Path, limit: int, head: bool) -> list[str]:
    """A file under its own heading: its first `limit` lines (head) or its last (tail)."""
    if not path.exists():
        return [f"--- {path.name}: none"]
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines:
        return [f"--- {path}: empty"]  # the baseline's diff, a run that printed nothing
    if len(lines) <= limit:
        return [f"--- {path}", *lines]
    if head:
        return [f"--- {path} (first {limit} of {len(lines)} lines)", *lines[:limit]]
    return [f"--- {path} (last {limit} of {len(lines)} lines)", *lines[-limit:]]
