"""The research loop: propose, commit, guard, run, evaluate, decide, record — then again.

Every state change is journaled (fsync'd) before the daemon acts on it, so a kill -9 at any point
resumes cleanly (see `reconcile`). The daemon alone runs git and training; the agent only returns
text. Read `experiment` top to bottom: it is the numbered list of DESIGN.md.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from loop import gitops, gpu, guard
from loop.agents.base import Agent, Context, HistoryItem, Proposal, Usage
from loop.display import Display
from loop.errors import AgentUnavailable, BudgetExhausted, ProposalFailed, SetupError
from loop.journal import (JOURNAL_NAME, ExperimentRecord, Journal, RunRecord, append_result, atomic_write,
                          experiment_dir, fold, rebuild_results, run_dir, state_dir)
from loop.procs import Cancel
from loop.runner import STARTUP_ALLOWANCE_S, RunOutcome, Runner, RunSpec, last_loss, startup_allowance_from

MIN_FREE_DISK_BYTES = 2 << 30  # below this the run stops rather than corrupt its state
BACKOFF_START_S, BACKOFF_MAX_S = 5.0, 300.0  # agent outages: retried for as long as they last
MAX_FAILED_PROPOSALS = 5  # in a row, then the agent is clearly broken
DIFFS_IN_HISTORY = 8  # recent experiments whose diff the agent sees


@dataclass(frozen=True)
class Config:
    tag: str
    agent: str
    budget: float = 300.0
    timeout: float = 600.0
    min_delta: float = 0.0
    max_experiments: int | None = None
    max_hours: float | None = None
    max_cost: float | None = None
    fix_attempts: int = 2
    queue: str | None = None  # the queue agent's folder
    model: str | None = None  # the LLM agents' model


class Stop:
    """Stop requests from signals: the first asks for a graceful stop, a second (or SIGUSR1) for now."""

    def __init__(self, cancel: Cancel) -> None:
        self.cancel = cancel
        self.graceful = False

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGUSR1, lambda *_: self.cancel.set())

    def _on_signal(self, *_: object) -> None:
        if self.graceful:
            self.cancel.set()
        self.graceful = True

    @property
    def requested(self) -> bool:
        return self.graceful or self.cancel.is_set()


class Daemon:
    def __init__(self, repo: Path, config: Config, agent: Agent, display: Display | None = None) -> None:
        self.repo, self.config, self.agent = repo, config, agent
        self.git = gitops.Git(repo)
        self.dir = run_dir(repo, config.tag)
        self.journal = Journal(self.dir / JOURNAL_NAME)
        self.results = repo / "results.tsv"
        self.display = display or Display()
        self.cancel = Cancel()
        self.stop = Stop(self.cancel)
        self.branch = gitops.BRANCH_PREFIX + config.tag
        self.state_path = state_dir(repo) / "state.json"
        self.protected: dict[str, str] = {}
        self.pinned: dict[str, bytes] = {}
        self.startup_allowance = STARTUP_ALLOWANCE_S
        self.run_started_at = time.time()
        self.previous_killed = False
        self.phase_started = time.monotonic()
        self.last_loss: str | None = None

    # --- the loop -------------------------------------------------------------------------------
    def run(self) -> str:
        """Run until stopped or a limit is hit; returns why it stopped."""
        self.stop.install()
        run = self.reconcile()
        reason = ""
        try:
            if not any(e.status in ("keep", "discard", "crash") for e in run.experiments):
                self.experiment(0, run)
                run = fold(self.journal.events())
                if run.experiments[0].status != "keep":
                    reason = f"the baseline crashed ({run.experiments[0].reason}): fix train.py, then start a new tag"
            while not reason:
                run = fold(self.journal.events())
                reason = self.limit_reached(run)
                if not reason:
                    self.experiment(self.next_number(run), run)
        finally:
            reason = reason or "stopped"
            self.journal.append("run_stopped", reason=reason)
            self.write_state(None, "stopped")
        return reason

    def experiment(self, n: int, run: RunRecord) -> None:
        parent = self.git.head()
        exp_dir = experiment_dir(self.repo, self.config.tag, n)
        exp_dir.mkdir(parents=True, exist_ok=True)
        best = run.best.val_bpb if run.best else None
        pending = next((e for e in run.experiments if e.n == n and e.status is None), None)
        attempt, last_failure, crashed_text = 0, "", ""
        while True:
            # 1. Propose (the baseline proposes the unmodified train.py).
            commit = self.resumable_commit(pending, parent, exp_dir)
            if commit is None:
                proposal = self.propose(n, run, parent, exp_dir, attempt, last_failure, crashed_text)
                if proposal is None:
                    return  # stopped while proposing: no experiment was spent
                # 2. Commit, and pin a ref so the experiment stays reachable whatever happens.
                commit = self.commit(n, proposal, parent, attempt)
            pending = None
            # 3. Guard the commit.
            violations = guard.check_commit(self.repo, commit, parent, self.protected)
            # 4-5. Run and evaluate, from trusted parts only.
            outcome = RunOutcome(reason=f"guard: {violations[0]}") if violations else self.run_and_evaluate(n, commit, exp_dir)
            if outcome.interrupted:
                self.journal.append("interrupted", n=n, phase="running")
                self.git.reset_hard(parent)
                return
            if outcome.simple_crash and attempt < self.config.fix_attempts and n > 0:
                attempt += 1
                last_failure, crashed_text = outcome.log_tail, self.git.show(commit, "train.py").decode(errors="replace")
                self.journal.append("fix_requested", n=n, attempt=attempt, reason=outcome.reason)
                self.git.reset_hard(parent)
                continue
            break
        # 6. Decide.
        status = self.decide(n, commit, parent, outcome, best)
        # 7. Record.
        self.record(n, status)

    # --- the steps --------------------------------------------------------------------------------
    def propose(self, n: int, run: RunRecord, parent: str, exp_dir: Path, attempt: int,
                last_failure: str, crashed_text: str) -> Proposal | None:
        train_py = (self.repo / "train.py").read_text(encoding="utf-8", errors="replace")
        if n == 0:
            self.journal.append("proposed", n=0, description="baseline", hypothesis="", usage=Usage(), agent_seconds=0.0, fix_attempt=0)
            return Proposal(train_py=train_py, description="baseline")
        context = Context(
            repo=self.repo, program=_read(self.repo / "program.md"), train_py=train_py,
            history=tuple(self.history(run)), best_val_bpb=run.best.val_bpb if run.best else None,
            notes_path=self.dir / "notes.md", run_dir=exp_dir, last_failure=last_failure, fix_of=crashed_text,
            budget_seconds=self.config.budget,
            remaining_cost_usd=None if self.config.max_cost is None else self.config.max_cost - run.total_usage.cost_usd)
        delay, failures = BACKOFF_START_S, 0
        while not self.stop.requested:
            self.journal.append("proposing", n=n, parent=parent, attempt=attempt)
            self.write_state(n, "proposing")
            started = time.monotonic()
            try:
                proposal = self.agent.propose(context)
            except AgentUnavailable as e:
                wait = e.retry_after if e.retry_after is not None else delay  # the server knows best
                self.journal.append("agent_waiting", n=n, error=str(e), retry_in=wait)
                self.write_state(n, "waiting", waiting=f"{e} (retry in {wait:.0f}s)")
                self.display.say(f"agent unavailable: {e}; retrying in {wait:.0f}s")
                self.sleep(wait)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            except ProposalFailed as e:
                failures += 1
                self.journal.append("proposal_failed", n=n, error=str(e), usage=e.usage if isinstance(e.usage, Usage) else Usage())
                self.display.say(f"proposal failed: {e}")
                if failures >= MAX_FAILED_PROPOSALS:
                    raise SetupError(f"the agent failed {failures} proposals in a row (last: {e}): see {self.dir}") from None
                continue
            (exp_dir / f"proposal{'' if not attempt else f'.fix{attempt}'}.py").write_text(proposal.train_py, encoding="utf-8")
            self.journal.append("proposed", n=n, description=proposal.description, hypothesis=proposal.hypothesis,
                                usage=proposal.usage, agent_seconds=round(time.monotonic() - started, 3), fix_attempt=attempt)
            return proposal
        return None

    def commit(self, n: int, proposal: Proposal, parent: str, attempt: int) -> str:
        (self.repo / "train.py").write_text(proposal.train_py, encoding="utf-8")
        description = " ".join(proposal.description.split()) or f"experiment {n}"
        if n == 0:
            commit = parent  # the baseline is the branch point itself
        else:
            commit = self.git.commit_file("train.py", description)
        ref = f"{gitops.REF_PREFIX}{self.config.tag}/{n:04d}" + (f".fix{attempt}" if attempt else "")
        self.git.pin(ref, commit)
        if attempt:
            self.git.pin(f"{gitops.REF_PREFIX}{self.config.tag}/{n:04d}", commit)
        self.journal.append("committed", n=n, commit=commit, parent=parent, ref=ref)
        return commit

    def resumable_commit(self, pending: ExperimentRecord | None, parent: str, exp_dir: Path) -> str | None:
        """On resume, an undecided experiment is re-run from its commit (or its saved proposal),
        not proposed again: the agent's work, and its cost, are not thrown away."""
        if pending is None:
            return None
        if pending.commit is not None:
            self.display.say(f"resuming experiment {pending.n} from its commit {pending.commit[:7]}")
            return pending.commit
        saved = exp_dir / f"proposal{'' if not pending.fix_attempts else f'.fix{pending.fix_attempts}'}.py"
        if pending.phase == "proposed" and saved.exists():
            proposal = Proposal(saved.read_text(encoding="utf-8"), pending.description, pending.hypothesis)
            return self.commit(pending.n, proposal, parent, pending.fix_attempts)
        return None

    def run_and_evaluate(self, n: int, commit: str, exp_dir: Path) -> RunOutcome:
        if self.previous_killed:
            gpu.wait_for_free_memory()
        train_py = self.git.show(commit, "train.py")
        (exp_dir / "diff.patch").write_text(self.git.diff(f"{commit}~1", commit) if n else "", encoding="utf-8")
        self.journal.append("running", n=n, commit=commit)
        self.write_state(n, "training")
        runner = Runner(self.repo, self.pinned, self.cancel, self.on_line(n))
        spec = RunSpec(train_py, exp_dir, self.config.budget, self.config.timeout,
                       startup_allowance=self.startup_allowance)
        outcome = runner.train(spec)
        if not outcome.reason:
            self.journal.append("evaluating", n=n, train_seconds=round(outcome.train_seconds, 3), summary=outcome.summary)
            self.write_state(n, "evaluating")
            outcome = runner.evaluate(spec, outcome)
        if n == 0 and not outcome.reason:  # the baseline's start-up sets the allowance of the rest
            self.startup_allowance = startup_allowance_from(outcome.train_seconds, self.config.budget)
        self.previous_killed = outcome.killed
        scratch = ("train", "home", "tmp", "model", "scorer", "model-main", "model-probe", "model-canary")
        for sub in scratch:  # keep logs and the checkpoint, not scratch copies
            shutil.rmtree(exp_dir / sub, ignore_errors=True)
        violations = guard.check_tree(self.repo, self.protected) + self.check_git(commit)
        if violations and not outcome.interrupted:
            outcome.val_bpb, outcome.reason, outcome.simple_crash = None, f"guard: {violations[0]}", False
        self.journal.append("evaluated", n=n, val_bpb=outcome.val_bpb, reason=outcome.reason, summary=outcome.summary,
                            peak_vram_mb=outcome.peak_vram_mb, train_seconds=round(outcome.train_seconds, 3),
                            eval_seconds=round(outcome.eval_seconds, 3))
        return outcome

    def check_git(self, commit: str) -> list[str]:
        """The run must not have moved the branch, HEAD or the experiment refs, or edited the tree."""
        found = []
        if self.git.current_branch() != self.branch:
            found.append(f"the run switched branches (now {self.git.current_branch()})")
            self.git.checkout(self.branch)
        if self.git.head() != commit:
            found.append("the run moved the branch")
        if self.git.dirty():
            found.append(f"the run changed tracked files: {', '.join(self.git.dirty()[:3])}")
        if found:
            self.git.reset_hard(commit)
        return found

    def decide(self, n: int, commit: str, parent: str, outcome: RunOutcome, best: float | None) -> str:
        if outcome.val_bpb is None:
            status = "crash"
        elif best is None or outcome.val_bpb < best - self.config.min_delta:
            status = "keep"
        else:
            status = "discard"
        self.git.reset_hard(commit if status == "keep" else parent)
        best_after = outcome.val_bpb if status == "keep" else best
        self.journal.append("decided", n=n, status=status, reason=outcome.reason, best_before=best,
                            best_after=best_after, tip=self.git.head())
        return status

    def record(self, n: int, status: str) -> None:
        rec = next(e for e in fold(self.journal.events()).experiments if e.n == n)
        append_result(self.results, rec)
        self.journal.append("recorded", n=n)
        self.write_state(n, "recorded")
        self.display.finished(n, status, rec.val_bpb, rec.best_before, time.time() - (rec.started_at or time.time()), rec.description)

    def begin(self, hardware: dict) -> None:
        """Journal the start of a new run: what it is, where it branched, what must not change."""
        self.protected = guard.protected_hashes(self.repo)
        self.journal.append("run_started", tag=self.config.tag, branch=self.branch, base_commit=self.git.head(),
                            protected=self.protected, agent=self.agent.name, config=asdict(self.config), hardware=hardware)

    # --- resume -----------------------------------------------------------------------------------
    def reconcile(self) -> RunRecord:
        """Make journal, git and results.tsv agree before the loop starts (fresh run or resume)."""
        run = fold(self.journal.events())
        meta = run.meta
        self.protected = meta.get("protected") or guard.protected_hashes(self.repo)
        self.pinned = {name: (self.repo / name).read_bytes() for name in ("prepare.py", "val.txt", "holdout.txt")
                       if name != "holdout.txt" or (self.repo / name).exists()}
        for rec in run.experiments:
            if rec.status in ("keep", "discard", "crash") and not rec.recorded:
                self.journal.append("recorded", n=rec.n)  # the row is rebuilt below
            elif rec.status is None and rec.phase == "evaluated":
                outcome = RunOutcome(reason=rec.reason, scores={} if rec.val_bpb is None else {"val": rec.val_bpb})
                self.decide(rec.n, rec.commit or "", rec.parent or "", outcome, run.best.val_bpb if run.best else None)
                self.journal.append("recorded", n=rec.n)
        run = fold(self.journal.events())
        rebuild_results(self.results, run)
        tip = run.best.commit if run.best else meta.get("base_commit")
        if tip:
            self.git.checkout(self.branch)
            self.git.reset_hard(tip)
        if run.experiments:
            self.journal.append("run_resumed", tag=self.config.tag, config=asdict(self.config))
        self.run_started_at = run.started_at or time.time()
        return run

    # --- helpers ----------------------------------------------------------------------------------
    def history(self, run: RunRecord) -> list[HistoryItem]:
        decided = [e for e in run.experiments if e.status in ("keep", "discard", "crash")]
        recent = {e.n for e in decided[-DIFFS_IN_HISTORY:]}
        return [HistoryItem(number=e.n, commit=(e.commit or "")[:7], status=e.status or "", val_bpb=e.val_bpb,
                            best_before=e.best_before, memory_gb=e.memory_gb, description=e.description,
                            hypothesis=e.hypothesis, reason=e.reason,
                            diff=_read(experiment_dir(self.repo, self.config.tag, e.n) / "diff.patch") if e.n in recent else "")
                for e in decided]

    def next_number(self, run: RunRecord) -> int:
        pending = [e.n for e in run.experiments if e.status is None]
        if pending:
            return min(pending)
        return max((e.n for e in run.experiments), default=-1) + 1

    def limit_reached(self, run: RunRecord) -> str:
        c = self.config
        done = len([e for e in run.experiments if e.n > 0 and e.status in ("keep", "discard", "crash")])
        if self.stop.requested:
            return "stop requested"
        if c.max_experiments is not None and done >= c.max_experiments:
            return f"reached --max-experiments {c.max_experiments}"
        if c.max_hours is not None and time.time() - self.run_started_at >= c.max_hours * 3600:
            return f"reached --max-hours {c.max_hours:g}"
        if c.max_cost is not None:
            costs = [e.usage.cost_usd for e in run.experiments[-10:]]
            if run.total_usage.cost_usd + max(costs, default=0.0) > c.max_cost:
                return f"the next proposal could exceed --max-cost ${c.max_cost:.2f} (spent ${run.total_usage.cost_usd:.2f})"
        if shutil.disk_usage(self.repo).free < MIN_FREE_DISK_BYTES:
            raise BudgetExhausted(f"less than {MIN_FREE_DISK_BYTES >> 30} GiB of free disk at {self.repo}: free some space, then `autoresearch resume --tag {c.tag}`")
        return ""

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.stop.requested:
            time.sleep(min(0.2, end - time.monotonic()))

    def on_line(self, n: int):
        started = time.monotonic()
        loss: list[str | None] = [None]

        def watch(line: str) -> None:
            loss[0] = last_loss(line) or loss[0]
            self.last_loss = loss[0]
            self.display.live(n, "training", time.monotonic() - started, self.config.budget, loss[0])

        return watch

    def write_state(self, n: int | None, phase: str, waiting: str = "") -> None:
        """The live view `status` reads: cheap, atomic, never the source of truth."""
        self.phase_started = time.time()
        atomic_write(self.state_path, json.dumps({
            "pid": os.getpid(), "tag": self.config.tag, "n": n, "phase": phase, "since": self.phase_started,
            "waiting": waiting, "budget": self.config.budget, "last_loss": self.last_loss}))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
