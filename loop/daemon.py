"""The controller: the one place that journals, touches git and decides.

Many experiments are in flight at once: the agent proposes ahead in threads (proposer.py), slots
train and evaluate (executor.py), and both report back through one queue of events. The
controller is single-threaded over that queue, so its state needs no lock. One experiment goes:

  1. Propose   ask the agent ahead of time, on the best kept commit     ask_ahead, on ProposalReady
  2. Commit    on the best at dispatch; rebased by a 3-way merge if the best moved   commit
  3. Guard     only editable files changed; protected files intact; the lint   commit
  4. Run       on a free slot, seed and budget from the harness               dispatch
  5. Evaluate  by the trusted evaluator, in the slot's thread                 on Finished
  6. Decide    the Policy: keep, discard, or confirm with one more run; a new best
               runs until it has --best-runs runs, and results wait for its mean  decide, settle_best
  7. Record    journal, results.tsv row, logs under .autoresearch/runs/TAG/NNNN/   decide

Every step is journaled (fsync'd) before it acts, so a kill -9 anywhere resumes cleanly with any
number of experiments in flight (see `load`). The working tree follows the best kept commit.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import queue
import secrets
import shutil
import signal
import threading
import time
import traceback
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

from loop import gitops, guard
from loop import target as targets
from loop.agents.base import Agent, Context, HistoryItem, InFlight, Usage
from loop.config import BEST_CRASHES, BEST_RUNS, Config
from loop.display import Display
from loop.errors import AutoresearchError, BaselineCrashed, BudgetExhausted, InternalError, SetupError
from loop.events import (
    AgentUnavailable,
    Committed,
    Confirming,
    Decided,
    Evaluated,
    Evaluating,
    Event,
    FixRequested,
    Growing,
    HoldoutScored,
    InternalFault,
    Interrupted,
    ProposalFailed,
    Proposed,
    Proposing,
    Recorded,
    Remeasuring,
    RunLost,
    Running,
    RunResumed,
    RunStarted,
    RunStopped,
    Settling,
    TrainingStarted,
)
from loop.executor import Executor, Finished, Job, LocalExecutor, Lost, Started, TrainingEnded, plan_slots
from loop.journal import (
    JOURNAL_NAME,
    STATUSES,
    ExperimentRecord,
    Journal,
    RunRecord,
    append_result,
    apply_event,
    atomic_write,
    experiment_dir,
    fold,
    read_events_checked,
    rebuild_results,
    run_dir,
    state_dir,
)
from loop.policy import MAX_CONFIRMATIONS, Noise, Policy, draws, measured_noise, repeats_differ
from loop.procs import Cancel
from loop.proposer import AgentBroken, AgentWaiting, ProposalError, ProposalReady, Proposer, Request
from loop.runner import (
    Runner,
    RunOutcome,
    RunSpec,
    eval_limits_from,
    last_loss,
    over_eval_limits,
    startup_allowance_from,
)
from loop.target_runner import TargetRunner
from loop.trees import remove_tree

EDITABLE = "train.py"
PINNED = ("prepare.py", "val.txt", "holdout.txt")  # the harness's bytes, fixed at the run's start
MIN_FREE_DISK_BYTES = 2 << 30  # below this the run stops rather than corrupt its state
MAX_FAILED_PROPOSALS = 5  # in a row, then the agent is clearly broken
# A proposal's text is read by the guard on the controller's thread (a secret scan at some 10 s a
# megabyte on a busy machine), while every run in flight waits to be recorded: no edit of a
# training script needs more.
MAX_PROPOSAL_BYTES = 1 << 20
DIFFS_IN_HISTORY = 8  # recent experiments whose diff the agent sees
STATE_EVERY_S = 1.0  # how often the live view (`status`) is refreshed
WORK_DIR = "work"  # in the run's folder: the token-named folders of the runs in flight
SETTLING = "settling"  # key of the decisions held until the best's settling runs are in


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


@dataclass
class Attempt:
    """One experiment not decided yet: its proposal, its commit once made, and its runs."""

    n: int
    kind: str  # baseline | agent | combine
    parent: str  # the best kept commit it was proposed on
    description: str = ""
    hypothesis: str = ""
    proposal: str | None = None  # the editable files' new text, until committed (see proposal_files)
    commit: str | None = None
    fix_attempt: int = 0
    conflict_retried: bool = False
    runs_wanted: int = 1
    queued_runs: list[int] = field(default_factory=list)  # run indices waiting for a slot
    running: dict[int, str] = field(default_factory=dict)  # run index -> phase (running, evaluating)
    outcomes: dict[int, RunOutcome] = field(default_factory=dict)
    parent_score: float | None = None  # the best's mean when this experiment was dispatched
    hardware_of: dict[int, str] = field(default_factory=dict)  # best runs: run index -> hardware it must run on
    growth_runs: set[int] = field(default_factory=set)  # best runs nobody waits for (see settle_best)


class Daemon:
    def __init__(self, repo: Path, config: Config, agent: Agent, display: Display | None = None,
                 executor: Executor | None = None) -> None:
        self.repo, self.config, self.agent = repo, config, agent
        self.git = gitops.Git(repo)
        self.target = targets.of_config(repo, config.target)
        self.dir = run_dir(repo, config.tag)
        self.journal = _FoldingJournal(self.dir / JOURNAL_NAME)
        self.results = repo / self.target.results
        self.display = display or Display()
        self.cancel = Cancel()
        self.stop = Stop(self.cancel)
        self.branch = gitops.BRANCH_PREFIX + config.tag
        self.state_path = targets.state_file(repo, self.target)
        self.events: queue.Queue = queue.Queue()
        self.slots = plan_slots(config.gpus, config.slots) if config.ray is None else []
        self.executor = executor or self.make_executor()
        self.proposer = Proposer(agent, self.events, lambda: self.stop.requested or bool(self.stopping))
        self.policy = Policy(config.min_delta, config.keep_z, config.confirm)
        self.protected: dict[str, str] = {}
        # The person's own untracked modules (an in-repo virtualenv) as at start or resume: a run that
        # adds or changes one is caught (without a sandbox, the only place it could do that).
        self.untracked: dict[str, tuple[int, int]] = {}
        self.pinned: dict[str, bytes] = {}
        self.secrets: guard.SecretIndex | None = None
        self.attempts: dict[int, Attempt] = {}  # undecided experiments, and the best's later runs, by number
        self.to_ask: list[tuple[int, int, str, str]] = []  # (n, attempt, last failure, crashed text) to ask again
        self.run: RunRecord = RunRecord()
        self.best: ExperimentRecord | None = None
        self.next_n = 0
        self.failed_in_row = 0
        self.stopping = ""  # why the run is winding down: no new proposals or dispatches
        self.fatal: AutoresearchError | None = None
        self.waiting = ""
        self.allowance: float | None = None  # start-up allowance, measured from the baseline
        self.eval_limits: dict[str, float] = {}  # the model processes' time limits, from the baseline's
        self.slot_view: dict[str, dict[str, Any]] = {s: {} for s in self.executor.slot_names()}
        self.busy_seconds: dict[str, float] = {s: 0.0 for s in self.slot_view}
        self.first_dispatch: float | None = None
        self.state_written = 0.0
        self.eval_since: dict[tuple[int, int], float] = {}
        self.conflicts: dict[int, str] = {}  # experiment -> the conflicting merge it is asked to redo
        self.holdouts_pending: dict[int, float] = {}  # kept experiments whose holdout is being scored -> since
        self.held: dict[str, list[int]] = {}  # hardware -> experiments waiting for the best's run there
        self.run_usage = Usage()
        self.waiting_since = 0.0

    # --- the loop ---------------------------------------------------------------------------------
    def run_loop(self) -> str:
        """Run until stopped or a limit is hit; returns why it stopped (raises on a fatal error)."""
        self.stop.install()
        self.load()
        reason = ""
        try:
            while True:
                if self.cancel.is_set() and self.stopping != "stopped now":
                    self.stopping = "stopped now"
                    self.display.say(f"stopping now: the runs in flight are interrupted, not lost "
                                     f"(`autoresearch resume --tag {self.config.tag}` runs them again)")
                if not self.stopping:
                    self.stopping = self.limit_reached()
                    if self.stopping == "stop requested":
                        self.display.say("stop requested: the experiments in flight finish first "
                                         "(Ctrl-C again, or `autoresearch stop --now`, to stop now)")
                if not self.stopping:
                    self.ask_ahead()
                    self.settle_best()
                    self.dispatch()
                else:
                    self.wind_down()
                if self.stopping and not self.runs_in_flight():
                    break
                event = _next_event(self.events, timeout=0.2)
                if event is not None:
                    self.handle(event)
                self.write_state()
            reason = self.stopping
            for att in sorted(self.attempts.values(), key=lambda a: a.n):
                if att.kind in ("agent", "combine") and att.outcomes and att.queued_runs:
                    self.display.say(f"#{att.n:04d} waits for a confirmation run: "
                                     f"`autoresearch resume --tag {self.config.tag}` runs it and decides")
        except AutoresearchError:
            raise
        except Exception as e:  # a bug of ours: journaled with its traceback, one line to the user, resumable
            self.cancel.set()
            self.journal.append(InternalFault(error=repr(e), traceback=traceback.format_exc()))
            reason = f"internal error: {e!r}"
            raise InternalError(f"{reason}; the traceback is in {self.journal.path}; "
                                f"`autoresearch resume --tag {self.config.tag}` continues") from None
        finally:
            self.executor.shutdown()
            with contextlib.suppress(OSError):
                (self.dir / WORK_DIR).rmdir()  # empty once every run is filed
            reason = reason or "stopped"
            self.journal.append(RunStopped(reason=reason))
            self.write_state(phase="stopped")
        if self.fatal is not None:
            raise self.fatal
        return reason

    # --- 1. propose ---------------------------------------------------------------------------------
    def ask_ahead(self) -> None:
        """Keep slots + lookahead experiments in flight, so a slot waits for the agent only when the
        agent is slower than a whole run."""
        slots = len(self.executor.slot_names())  # on a cluster, as many as it has now
        lookahead = self.config.lookahead if self.config.lookahead is not None else slots
        while self.proposer.can_ask() and self.baseline_decided():
            if self.to_ask:
                n, attempt, failure, crashed = self.to_ask.pop(0)
            elif self.waiting_for_slots() < slots + lookahead and self.room_for_more():
                n, attempt, failure, crashed = self.next_n, 0, "", ""
                self.next_n += 1
            else:
                return
            parent = self.best_commit()
            self.journal.append(Proposing(n=n, parent=parent, attempt=attempt))
            context = self.context(n, failure, crashed)
            self.attempts.setdefault(n, Attempt(n, "agent", parent)).parent = parent
            self.proposer.ask(Request(n, parent, attempt, context))

    def on_proposal(self, event: ProposalReady) -> None:
        req, proposal = event.request, event.proposal
        text = proposal.train_py if self.target.builtin else json.dumps(proposal.files)
        if (size := len(text.encode("utf-8", "surrogatepass"))) > MAX_PROPOSAL_BYTES:
            self.on_proposal_error(ProposalError(req, f"the proposal is {size:,} bytes, over the {MAX_PROPOSAL_BYTES:,} "
                                                      "a run takes", proposal.usage))
            self.file_as_used(req.n, proposal.receipt)
            return
        exp_dir = self.exp_dir(req.n)
        exp_dir.mkdir(parents=True, exist_ok=True)
        (exp_dir / self.proposal_name(req.attempt)).write_text(text, encoding="utf-8")
        self.journal.append(Proposed(n=req.n, parent=req.parent, description=proposal.description,
                                     hypothesis=proposal.hypothesis, usage=proposal.usage,
                                     agent_seconds=event.agent_seconds, fix_attempt=req.attempt))
        self.file_as_used(req.n, proposal.receipt)
        self.failed_in_row = 0
        self.waiting = ""
        att = self.attempts.setdefault(req.n, Attempt(req.n, "agent", req.parent))
        att.parent, att.proposal, att.fix_attempt = req.parent, text, req.attempt
        att.description = " ".join(proposal.description.split()) or f"experiment {req.n}"
        att.hypothesis = proposal.hypothesis
        self.run_usage = self.run_usage + proposal.usage
        if self.baseline_decided() and not self.held_back(att):
            self.commit(att)  # now, off the path between one run and the next

    def file_as_used(self, n: int, receipt: str) -> None:
        """The proposal from `receipt` is journaled (as proposed or as failed): the agent may let go of it."""
        if receipt and hasattr(self.agent, "accepted"):
            try:
                self.agent.accepted(receipt)
            except OSError as e:
                self.display.say(f"the agent could not file proposal {n} as used ({e}): it may come again")

    def on_proposal_error(self, event: ProposalError) -> None:
        req = event.request
        self.journal.append(ProposalFailed(n=req.n, error=event.error, usage=event.usage))
        self.run_usage = self.run_usage + event.usage
        if self.stop.requested or self.stopping:
            return
        self.failed_in_row += 1
        self.display.say(f"proposal failed: {event.error}")
        if self.failed_in_row >= MAX_FAILED_PROPOSALS:
            self.fail(SetupError(f"the agent failed {self.failed_in_row} proposals in a row (last: {event.error}): "
                                 f"see {self.dir}"))
            return
        self.to_ask.append((req.n, req.attempt, req.context.last_failure, req.context.fix_of))

    # --- 2-3. commit and guard ----------------------------------------------------------------------
    def commit(self, att: Attempt) -> bool:
        """Commit a ready proposal on the best kept commit; False when it did not become an experiment."""
        best = self.best_commit()
        files = self.proposal_files(att.proposal or "")
        rebased_from = None
        if att.parent != best:
            files, conflict = self.rebase(att.parent, best, files)
            if conflict is not None:
                return self.hand_back_conflict(att, conflict)
            rebased_from = att.parent
        try:
            commit = self.git.commit_files(best, files, att.description)
        except gitops.NothingToCommit:
            self.journal.append(ProposalFailed(n=att.n, error="the proposal changes nothing", usage=Usage()))
            self.display.say(f"proposal {att.n} changes nothing: asking again")
            att.proposal, att.commit, att.queued_runs = None, None, []
            self.to_ask.append((att.n, att.fix_attempt, "", ""))
            return False
        ref = self.ref(att.n, att.fix_attempt)
        self.git.pin(ref, commit)
        if att.fix_attempt:
            self.git.pin(self.ref(att.n, 0), commit)
        self.journal.append(Committed(n=att.n, commit=commit, parent=best, ref=ref, kind=att.kind,
                                      rebased_from=rebased_from))
        if rebased_from:
            self.display.say(f"#{att.n:04d} rebased onto the new best {best[:7]}")
        att.commit, att.parent, att.proposal = commit, best, None
        (self.exp_dir(att.n) / "diff.patch").write_bytes(self.git.diff(best, commit, ":/"))
        violations = self.guard_commit(commit, best)
        if violations:
            self.finish(att, RunOutcome(reason=f"guard: {violations[0]}"))
            return False
        att.queued_runs = list(range(att.runs_wanted))
        return True

    def guard_commit(self, commit: str, parent: str) -> list[str]:
        if not self.target.builtin:
            return guard.check_target_commit(self.repo, commit, parent, self.protected, self.target)
        return guard.check_commit(self.repo, commit, parent, self.protected, self.secrets)

    def proposal_files(self, text: str) -> dict[str, bytes]:
        """A proposal's files: train.py's text for the builtin, a JSON object path -> text for a custom target."""
        if self.target.builtin:
            return {EDITABLE: text.encode("utf-8")}
        return {path: content.encode("utf-8") for path, content in json.loads(text or "{}").items()}

    def proposal_text(self, commit: str) -> str:
        """The editable files at a commit, written as a proposal (the inverse of proposal_files)."""
        if self.target.builtin:
            return self.git.show(commit, EDITABLE).decode("utf-8", errors="replace")
        return json.dumps({p: self.git.show(commit, p).decode("utf-8", errors="replace")
                           for p in self.editable(commit)})

    def editable(self, commit: str) -> list[str]:
        if self.target.builtin:
            return [EDITABLE]
        return self.target.editable_files(self.git.files_at(commit))

    def rebase(self, old_parent: str, new_parent: str,
               files: dict[str, bytes]) -> tuple[dict[str, bytes], bytes | None]:
        """Files made on old_parent, merged onto new_parent; the conflicting merge, when there is one."""
        merged: dict[str, bytes] = {}
        for path, content in files.items():
            merged[path], conflicts = self.git.rebase_text(old_parent, new_parent, path, content)
            if conflicts:
                if self.target.builtin:
                    return merged, merged[path]
                return merged, json.dumps({p: t.decode("utf-8", errors="replace") for p, t in merged.items()}).encode()
        return merged, None

    def hand_back_conflict(self, att: Attempt, merged: bytes) -> bool:
        """A proposal that no longer merges goes back to the agent once with the new best."""
        self.journal.append(ProposalFailed(n=att.n, error="conflicts with the new best", usage=Usage(),
                                           conflict=True))
        att.proposal, att.commit, att.queued_runs = None, None, []
        if att.conflict_retried or att.kind != "agent":
            self.display.say(f"#{att.n:04d} conflicts with the new best again: dropped")
            self.attempts.pop(att.n, None)
            return False
        att.conflict_retried = True
        self.display.say(f"#{att.n:04d} ({att.description}) conflicts with the new best: the agent redoes it on "
                         "the new best, under the same number")
        self.to_ask.append((att.n, att.fix_attempt, "", ""))
        self.conflicts[att.n] = merged.decode("utf-8", errors="replace")
        return False

    # --- 4. run ---------------------------------------------------------------------------------------
    def dispatch(self) -> None:
        while self.executor.free_slots() > 0:
            job = self.next_job()
            if job is None:
                return
            self.journal.append(Running(n=job.n, run=job.run, commit=job.commit, seed=job.spec.seed))
            self.first_dispatch = self.first_dispatch or time.time()
            att = self.attempts[job.n]
            att.running[job.run] = "running"
            self.executor.submit(job, hardware=att.hardware_of.get(job.run) or None)

    def next_job(self) -> Job | None:
        """Runs of experiments already under way first (repeats, resumed ones), then new ones, each on
        the best kept commit as it is now."""
        waiting = sorted(self.attempts.values(), key=lambda a: (not (a.outcomes or a.running), a.n))
        for att in waiting:
            if att.commit is None and att.proposal is not None and self.baseline_decided() and not self.held_back(att):
                self.commit(att)
            if att.commit is None or not att.queued_runs:
                continue
            fresh = not att.outcomes and not att.running
            if fresh and att.kind != "baseline" and att.parent != self.best_commit():
                att.proposal = self.proposal_text(att.commit)
                if not self.commit(att):  # the best moved since it was committed: rebase it now
                    continue
            if fresh:
                att.parent_score = self.best_mean()
            return self.job(att, att.queued_runs.pop(0))
        return None

    def job(self, att: Attempt, run: int) -> Job:
        # A run works in a folder named by a random token, not by its experiment and run: nothing a
        # run can see of its own paths (its output folder, its mounts) tells a rerun from a first
        # run. It is filed under the experiment's folder when it ends (file_run).
        work = self.dir / WORK_DIR / secrets.token_hex(8)
        work.mkdir(parents=True)
        allowance = self.allowance if self.allowance is not None else self.config.timeout - self.config.budget
        train_py = self.git.show(att.commit or "", EDITABLE) if self.target.builtin else b""
        spec = RunSpec(train_py=train_py, exp_dir=work, budget=self.config.budget,
                       timeout=self.config.timeout, seed=self.seed(att.n, run), startup_allowance=allowance,
                       splits=("val",), kernels=self.dir / "kernels", keep_kernels=att.n == 0)
        return Job(att.n, run, att.commit or "", spec)

    def make_executor(self) -> Executor:
        if self.config.ray is None:
            return LocalExecutor(self.slots, self.make_runner, self.events, self.cancel)
        from loop.ray_executor import RayExecutor  # Ray is imported only when asked for

        pinned = {name: (self.repo / name).read_bytes() for name in PINNED if (self.repo / name).is_file()}
        executor = RayExecutor(self.config.ray, pinned, self.events, self.cancel,
                               screen_on=self.config.screen_on, confirm_on=self.config.confirm_on,
                               fetch_checkpoints=self.config.fetch_checkpoints)
        self.display.say(executor.describe())
        return executor

    def make_runner(self, job: Job) -> Runner | TargetRunner:
        if not self.target.builtin:
            cache = state_dir(self.repo) / "cache" / self.target.name
            return TargetRunner(self.repo, self.target, job.commit, cache, self.cancel, self.on_line(job))
        return Runner(self.repo, self.pinned, self.cancel, self.on_line(job))

    # --- 5. evaluate (events from the slots) ------------------------------------------------------------
    def handle(self, event: object) -> None:
        if isinstance(event, ProposalReady):
            self.on_proposal(event)
        elif isinstance(event, ProposalError):
            self.on_proposal_error(event)
        elif isinstance(event, AgentWaiting):
            self.waiting_since = self.waiting_since if self.waiting else time.time()
            self.waiting = f"{event.error} (retry in {event.retry_in:.0f}s)"
            self.journal.append(AgentUnavailable(n=event.request.n, error=event.error, retry_in=event.retry_in))
            self.display.say(f"agent unavailable: {event.error}; retrying in {event.retry_in:.0f}s")
        elif isinstance(event, AgentBroken):
            error = event.error
            self.fail(error if isinstance(error, AutoresearchError) else
                      SetupError(f"the agent failed: {type(error).__name__}: {error}"))
        elif isinstance(event, Started):
            self.journal.append(TrainingStarted(n=event.job.n, run=event.job.run, slot=event.slot, device=event.device,
                                                host=event.host))
            self.slot_view[event.slot] = {"n": event.job.n, "run": event.job.run, "phase": "training",
                                          "since": time.time(), "device": event.device, "loss": None}
        elif isinstance(event, TrainingEnded):
            out = event.outcome
            self.busy_seconds[event.slot] = self.busy_seconds.get(event.slot, 0.0) + out.train_seconds
            self.slot_view[event.slot] = {}
            if not out.reason:  # (a failed one is journaled, screened, when it is Finished)
                out = self.screened(out)
                self.journal.append(Evaluating(n=event.job.n, run=event.job.run,
                                               train_seconds=round(out.train_seconds, 3), summary=out.summary))
                self.attempts[event.job.n].running[event.job.run] = "evaluating"
                self.eval_since[event.job.key] = time.time()
        elif isinstance(event, Finished):
            self.on_finished(event.job, event.slot, event.outcome)
        elif isinstance(event, Lost) and event.job.score_only:  # a holdout's node vanished: it has no score
            self.on_holdout(event.job, RunOutcome(reason=f"lost: {event.why}"))
        elif isinstance(event, Lost):
            self.journal.append(RunLost(n=event.job.n, run=event.job.run, slot=event.slot, why=event.why))
            remove_tree(event.job.spec.exp_dir)  # it runs again, in a folder of its own
            att = self.attempts[event.job.n]
            att.running.pop(event.job.run, None)
            att.queued_runs.insert(0, event.job.run)

    def screened(self, outcome: RunOutcome) -> RunOutcome:
        """What a run printed reaches the journal and the agent only without validation text in it. A
        run never reads the split, but it can learn some from an earlier run's model process through
        what the kernel caches (README, Containment), and print it into its reason, log or summary."""
        if self.secrets is None:
            return outcome
        if outcome.reason and (why := self.secrets.found_in(outcome.reason)):
            outcome.reason = f"{outcome.reason.split(': ', 1)[0]}: (what the run said is withheld: it {why})"
        if outcome.log_tail and (why := self.secrets.found_in(outcome.log_tail)):
            outcome.log_tail = f"(the log's tail is withheld: it {why})"
        for key, value in list(outcome.summary.items()):
            if isinstance(value, str) and self.secrets.found_in(value):
                outcome.summary[key] = "(withheld)"
        return outcome

    def on_finished(self, job: Job, slot: str, outcome: RunOutcome) -> None:
        outcome = self.screened(outcome)
        if job.score_only:
            self.on_holdout(job, outcome)
            return
        att = self.attempts[job.n]
        att.running.pop(job.run, None)
        self.eval_since.pop(job.key, None)
        _drop_scratch(job.spec.exp_dir)
        self.file_run(job)
        if outcome.interrupted:
            self.journal.append(Interrupted(n=job.n, run=job.run, phase="running"))
            if not att.running:
                if att.kind != "best":  # the best's own later runs: the best stays decided
                    self.journal.append(Interrupted(n=job.n, phase="running"))
                self.attempts.pop(job.n, None)
            return
        if self.target.builtin:
            violations = guard.check_tree(self.repo, self.protected, self.untracked) + self.check_git()
        else:  # the run never saw the repository; its working tree is the person's, not the run's
            violations = guard.check_protected(self.repo, self.protected)
        if violations:
            outcome.scores, outcome.reason, outcome.simple_crash = {}, f"guard: {violations[0]}", False
        elif att.kind != "baseline" and not outcome.reason and (why := over_eval_limits(outcome.timings,
                                                                                         self.eval_limits)):
            outcome.scores, outcome.reason, outcome.simple_crash = {}, why, False
        _check_metric(outcome, allow_negative=not self.target.builtin)
        self.journal.append(Evaluated(n=job.n, run=job.run, slot=slot, val_bpb=outcome.val_bpb,
                                      scores=outcome.scores, reason=outcome.reason, summary=outcome.summary,
                                      peak_vram_mb=outcome.peak_vram_mb, train_seconds=round(outcome.train_seconds, 3),
                                      eval_seconds=round(outcome.eval_seconds, 3), timings=outcome.timings,
                                      hardware=outcome.hardware))
        att.outcomes[job.run] = outcome
        if att.kind == "best":
            self.best_run_done(att, job.run)
            return
        if outcome.reason and att.kind == "agent" and outcome.simple_crash and att.fix_attempt < self.fix_attempts():
            self.request_fix(att, outcome)
            return
        if att.running or att.queued_runs:
            return  # wait for the experiment's other runs
        self.decide(att)

    def fix_attempts(self) -> int:
        """Chances at a simple crash: none for an agent that cannot fix (`fixes = False`: the queue,
        whose next file is the next experiment, not a fix of the last)."""
        return self.config.fix_attempts if getattr(self.agent, "fixes", True) else 0

    def score_holdout(self, n: int, commit: str, outcomes: dict[int, RunOutcome]) -> None:
        """A kept commit is scored on the holdout once, from its first run's checkpoint (where that
        run left it: on a cluster, its node). The holdout never decides anything: the report sets it
        beside val to show whether the search is fitting the validation text."""
        if "holdout.txt" not in self.pinned:
            return
        run = min(r for r, o in outcomes.items() if o.val_bpb is not None)
        exp_dir = self.run_folder(n, run)  # the holdout never decides: no need to hide which run
        spec = RunSpec(train_py=self.git.show(commit, EDITABLE), exp_dir=exp_dir, budget=self.config.budget,
                       timeout=self.config.timeout, splits=("holdout",))
        self.holdouts_pending[n] = time.time()
        self.executor.submit(Job(n, run, commit, spec, score_only=True, ran_on=outcomes[run].hardware))

    def on_holdout(self, job: Job, outcome: RunOutcome) -> None:
        self.holdouts_pending.pop(job.n, None)
        self.journal.append(HoldoutScored(n=job.n, run=job.run, scores={"holdout": outcome.scores.get("holdout")},
                                          reason=outcome.reason, eval_seconds=round(outcome.eval_seconds, 3),
                                          timings=outcome.timings))
        _drop_scratch(job.spec.exp_dir)
        if self.config.keep_checkpoints == "none":
            remove_tree(job.spec.exp_dir / "ckpt")
            self.executor.discard_checkpoints([job.ran_on])

    def request_fix(self, att: Attempt, outcome: RunOutcome) -> None:
        """A simple crash (syntax, import, shape) goes back to the agent; it costs no row."""
        attempt = att.fix_attempt + 1
        crashed = self.proposal_text(att.commit or "")
        self.journal.append(FixRequested(n=att.n, attempt=attempt, reason=outcome.reason))
        if self.config.keep_checkpoints != "all":  # the next attempt is a new commit: this one's runs are done
            self.executor.discard_checkpoints([outcome.hardware])
        self.attempts[att.n] = Attempt(att.n, "agent", self.best_commit(), fix_attempt=attempt)
        self.to_ask.insert(0, (att.n, attempt, outcome.log_tail, crashed))

    # --- 6-7. decide and record ------------------------------------------------------------------------
    def decide(self, att: Attempt) -> None:
        crashed = next((o for _, o in sorted(att.outcomes.items()) if o.reason), None)
        scores = [o.val_bpb for _, o in sorted(att.outcomes.items()) if o.val_bpb is not None]
        best_before = self.best_mean()
        if crashed is not None or not scores:
            status, reason = "crash", crashed.reason if crashed else "no score"
        elif att.kind == "baseline":
            status, reason = "keep", ""
        else:
            hardware = _hardware_key(att.outcomes[max(att.outcomes)].hardware)
            best_scores = self.best_scores(hardware)
            if not best_scores and not self.best_crashes_again():  # never ran on this hardware: measure it there
                self.remeasure_best(hardware, att)
                return
            best_scores = best_scores or self.best_scores()  # it cannot be measured there: its runs anywhere
            if self.settling():  # compared with the best's mean once it has its runs
                self.held.setdefault(SETTLING, []).append(att.n)
                return
            runs = [o.val_bpb for _, o in sorted(att.outcomes.items())
                    if o.val_bpb is not None and _hardware_key(o.hardware) == hardware]
            scores = draws(runs, self.harness_varies())
            may_confirm = not self.deciding_at_stop() and len(runs) <= MAX_CONFIRMATIONS
            judged = self.policy.judge(scores, best_scores, self.noise(), may_confirm=may_confirm)
            reason = judged.why(self.target.view.text)  # what `show` says about a keep or a discard
            if judged.verdict == "confirm":
                run = max(att.outcomes) + 1
                self.journal.append(Confirming(n=att.n, run=run, scores=scores, reason=reason))
                att.runs_wanted += 1
                att.queued_runs.append(run)
                return
            status = judged.verdict
        mean = fmean(scores) if scores and status != "crash" else None
        if status == "keep":
            self.git.set_branch(self.branch, att.commit or "", self.editable(att.commit or ""))
            self.score_holdout(att.n, att.commit or "", att.outcomes)
            self.drop_best_runs()
        self.finish(att, None, status=status, reason=reason, mean=mean, best_before=best_before, runs=len(scores),
                    through=max(att.outcomes, default=-1) + 1)
        if status == "discard" and att.kind == "agent" and mean is not None:
            self.maybe_combine(att, mean)

    def remeasure_best(self, hardware: str, waiting: Attempt) -> None:
        """Results are compared like for like: a best with no run on this hardware (a resumed run on
        another machine, a cluster node of another kind) is run there once before anyone is judged."""
        self.held.setdefault(hardware, []).append(waiting.n)
        if len(self.held[hardware]) > 1 or self.best is None or not self.best.commit:
            return  # already being measured
        att = self.best_attempt()
        run = self.next_best_run(att)
        self.journal.append(Remeasuring(n=att.n, run=run, hardware=hardware, for_n=waiting.n))
        self.display.say(f"measuring the best (#{att.n:04d}) on {hardware} before comparing results there")
        att.queued_runs.insert(0, run)
        att.hardware_of[run] = hardware

    def settle_best(self) -> None:
        """A new best is run again, with fresh seeds, until it has --best-runs runs, and results wait
        for those: one run that won is a lucky draw more often than not (it was kept for being low),
        and every later result is compared with the best. Then it is run again as results are
        compared with it (Policy.best_runs_wanted), and nobody waits for those runs: each result is
        decided on the best's runs that are in. A best that crashes on BEST_CRASHES of its later runs
        is run no more: results are held to the runs it has, and status and the report say so."""
        best = self.best
        if best is None or not best.commit or self.stopping or self.best_crashes_again():
            return
        att = self.attempts.get(best.n)
        under_way = len(att.queued_runs) + len(att.running) if att is not None else 0
        # A crashed run counts as run: were it run again, a train.py crashing on purpose would pick
        # which of its draws count (crashing those its own training loss says were unlucky).
        runs = sum(1 for r in best.runs.values() if r.get("phase") == "evaluated") + under_way
        compared = self.compared_with_best()
        wanted = self.policy.best_runs_wanted(self.best_runs(), compared)
        if runs >= wanted:
            return
        att = self.best_attempt()
        for have in range(runs, wanted):
            run = self.next_best_run(att)
            if have < self.best_runs():
                self.journal.append(Settling(n=att.n, run=run))
            else:
                self.journal.append(Growing(n=att.n, run=run, compared=compared))
                att.growth_runs.add(run)
            att.queued_runs.append(run)

    def wind_down(self) -> None:
        """Stopping: runs not started are not started. The best's settling runs are dropped and a
        result's confirmation too, and what waited for them is decided on the runs there are, so a
        stop still records the results that ran (not `stop --now`: see deciding_at_stop). Those waiting
        for the best to run on other hardware stay as they are, for `resume`: deciding them would
        compare unlike with unlike."""
        att = self.attempts.get(self.best.n) if self.best is not None else None
        if att is not None and att.kind == "best" and att.queued_runs:
            att.queued_runs = [r for r in att.queued_runs if att.hardware_of.get(r)]
            if not att.running and not att.queued_runs:
                self.attempts.pop(att.n, None)
        if self.held.get(SETTLING) and not self.settling():
            for n in self.held.pop(SETTLING, []):
                if n in self.attempts:
                    self.decide(self.attempts[n])
        confirming = [a for a in self.attempts.values() if self.deciding_at_stop()
                      and a.kind in ("agent", "combine") and a.outcomes and a.queued_runs and not a.running]
        for att in confirming:
            att.queued_runs, att.runs_wanted = [], len(att.outcomes)
            self.decide(att)

    def deciding_at_stop(self) -> bool:
        """A limit (--max-experiments, --max-hours, --max-cost) decides results on the runs they have:
        the night is over. A stop asked for (`stop`, a signal, `stop --now`) leaves a result waiting
        for its confirmation to `resume`, as `stop --now` leaves the runs it kills: a grey result
        discarded for want of its second run would be lost for good."""
        return bool(self.stopping) and self.stopping != "stop requested" and not self.cancel.is_set()

    def drop_best_runs(self) -> None:
        """A new best: the former best's runs not started yet are not needed any more (those waiting
        for a remeasure stay, whoever they are compared with now)."""
        for att in [a for a in self.attempts.values() if a.kind == "best"]:
            att.queued_runs = [r for r in att.queued_runs if att.hardware_of.get(r)]
            if not att.running and not att.queued_runs:
                self.attempts.pop(att.n, None)

    def best_attempt(self) -> Attempt:
        """The best's runs after its decision (settling, remeasuring): one attempt of kind "best"."""
        best = self.best
        assert best is not None and best.commit
        att = self.attempts.get(best.n)
        if att is None:
            att = self.attempts[best.n] = Attempt(best.n, "best", best.commit, best.description, commit=best.commit,
                                                  runs_wanted=0)
        return att

    def next_best_run(self, att: Attempt) -> int:
        taken = [*(self.best.runs if self.best else ()), *att.outcomes, *att.running, *att.queued_runs]
        att.runs_wanted = max(taken, default=-1) + 2
        return att.runs_wanted - 1

    def best_run_done(self, att: Attempt, run: int) -> None:
        """One of the best's later runs is in: decide what waited for a run on its hardware, or for
        its settling to end. A best that has crashed BEST_CRASHES times is not run again: its queued
        runs (those for other hardware aside) are dropped."""
        hardware = att.hardware_of.pop(run, "")
        if self.best_crashes_again():
            att.queued_runs = [r for r in att.queued_runs if att.hardware_of.get(r)]
        if not att.running and not att.queued_runs:
            self.attempts.pop(att.n, None)
        waiting = self.held.pop(hardware, []) if hardware else []
        if not self.settling():  # its settling ended here, or with the runs dropped above
            waiting += self.held.pop(SETTLING, [])
        for n in waiting:
            if n in self.attempts:
                self.decide(self.attempts[n])

    def best_crashes_again(self) -> bool:
        """The best crashed on BEST_CRASHES of its runs after its decision: it is run no more, and
        results are held to the runs it has (on any hardware, when it has none on theirs)."""
        return self.best is not None and len(self.best.crashed_reruns()) >= BEST_CRASHES

    def settling(self) -> bool:
        """The best has settling runs queued or running (its runs for another hardware aside)."""
        att = self.attempts.get(self.best.n) if self.best is not None else None
        return att is not None and att.kind == "best" and any(
            not att.hardware_of.get(r) and r not in att.growth_runs for r in [*att.queued_runs, *att.running])

    def best_runs(self) -> int:
        if self.config.best_runs is not None:
            return self.config.best_runs
        return 1 if self.config.confirm == "never" else BEST_RUNS

    def finish(self, att: Attempt, guard_outcome: RunOutcome | None, status: str = "crash", reason: str = "",
               mean: float | None = None, best_before: float | None = None, runs: int = 0, through: int = 0) -> None:
        """Journal the decision, append the row, and tidy the experiment's directory."""
        if guard_outcome is not None:
            reason, best_before = guard_outcome.reason, self.best_mean()
            self.journal.append(Evaluated(n=att.n, run=0, val_bpb=None, scores={}, reason=reason, summary={},
                                          peak_vram_mb=0.0, train_seconds=0.0, eval_seconds=0.0, timings={},
                                          hardware={}))
        best_after = mean if status == "keep" else best_before
        self.journal.append(Decided(n=att.n, status=status, reason=reason, best_before=best_before,
                                    best_after=best_after, tip=self.git.ref_sha(self.branch), val_bpb=mean, runs=runs,
                                    through=through))
        self.attempts.pop(att.n, None)
        self.best = self.run.best
        rec = self.run.by_n[att.n]
        self.write_result(rec)
        self.journal.append(Recorded(n=att.n))
        self.tidy_checkpoints(att.n, status)
        wall = time.time() - (rec.started_at or time.time())
        self.display.finished(att.n, status, mean, best_before, wall,
                              att.description + (f" ({reason})" if status == "crash" and reason else "")
                              + (f" (mean of {runs})" if runs > 1 and att.kind != "baseline" else ""),
                              metric=self.target.view)
        if att.kind == "baseline" and status == "crash":
            self.stopping = "baseline crashed"
            self.fatal = BaselineCrashed(reason)
        if att.kind == "baseline" and status == "keep":
            self.measure_allowance()
            if self.baseline_learned_nothing():
                self.display.say(targets.learned_nothing_warning(self.target.view, rec.val_bpb, rec.summary,
                                                                  self.config.budget))

    def maybe_combine(self, att: Attempt, mean: float) -> None:
        """A change that beat its own parent but not a best that moved on while it ran is rebased onto
        the new best and tried once more, as a "combine" experiment."""
        limit = self.config.max_experiments
        under_way = {a.n for a in self.attempts.values() if a.n > 0 and a.kind != "best" and (a.commit or a.proposal)}
        if limit is not None and self.decided_count() + len(under_way) >= limit:
            return  # a combine goes before what the agent has yet to propose, never past the limit
        if att.parent_score is None or mean >= att.parent_score - self.config.min_delta:
            return
        best = self.best_commit()
        if att.parent == best or att.commit is None:
            return
        made = {EDITABLE: self.git.show(att.commit, EDITABLE)} if self.target.builtin else \
            self.proposal_files(self.proposal_text(att.commit))
        files, conflict = self.rebase(att.parent, best, made)
        if conflict is not None:
            return
        merged = files[EDITABLE] if self.target.builtin else json.dumps(
            {p: t.decode("utf-8", errors="replace") for p, t in files.items()}).encode()
        n = self.next_n
        self.next_n += 1
        description = f"combine: {att.description}"
        self.journal.append(Proposed(n=n, parent=best, description=description, hypothesis=att.hypothesis,
                                     usage=Usage(), agent_seconds=0.0, fix_attempt=0, combine_of=att.n))
        (self.exp_dir(n)).mkdir(parents=True, exist_ok=True)
        (self.exp_dir(n) / self.proposal_name(0)).write_bytes(merged)
        self.attempts[n] = Attempt(n, "combine", best, description, att.hypothesis,
                                   proposal=merged.decode("utf-8", errors="replace"))

    # --- start and resume ---------------------------------------------------------------------------------
    def begin(self, hardware: dict, floor: float | None = None) -> None:
        """Journal the start of a new run: what it is, where it branched, what must not change."""
        self.protected = self.protected_hashes()
        self.untracked = guard.untracked_modules(self.repo) if self.target.builtin else {}
        self.journal.append(RunStarted(tag=self.config.tag, branch=self.branch, base_commit=self.git.head(),
                                       protected=self.protected, agent=self.agent.name, config=asdict(self.config),
                                       target=None if self.target.builtin else targets.describe(self.target),
                                       hardware=hardware, floor=floor, slots=self.executor.slot_names()))

    def load(self) -> None:
        """Make journal, git and results.tsv agree, and pick up every undecided experiment where it was."""
        remove_tree(self.dir / WORK_DIR)  # runs in flight when the daemon last stopped
        events, problems = read_events_checked(self.journal.path)
        for line in problems:
            self.display.say(f"warning: {line}")
        run = fold(events)
        meta = run.meta
        self.protected = meta.get("protected") or self.protected_hashes()
        self.untracked = guard.untracked_modules(self.repo) if self.target.builtin else {}
        if self.target.builtin:  # a custom target's runs take every file from the commit
            self.pinned = {name: (self.repo / name).read_bytes() for name in PINNED if (self.repo / name).is_file()}
        self.secrets = guard.SecretIndex.build(self.pinned[k] for k in guard.SECRET_FILES if k in self.pinned)
        for rec in run.experiments:
            if rec.status in STATUSES and not rec.recorded:
                self.journal.append(Recorded(n=rec.n))  # the row is rebuilt below
        self.run = self.journal.run = fold(self.journal.events())
        if self.target.builtin:
            rebuild_results(self.results, self.run)
        else:
            atomic_write(self.results, targets.results_text(self.target, self.run))
        self.best = self.run.best
        tip = self.best.commit if self.best else meta.get("base_commit")
        if tip and self.target.builtin:
            self.git.checkout(self.branch)
            self.git.set_branch(self.branch, tip, [EDITABLE])
        elif tip:  # a custom target leaves the working tree alone: two targets share it
            self.git.set_branch(self.branch, tip, [])
        self.next_n = max((e.n for e in self.run.experiments), default=-1) + 1
        self.run_usage = self.run.total_usage
        baseline = next((e for e in self.run.experiments if e.n == 0), None)
        if baseline is not None and baseline.status == "keep":
            self.measure_allowance()
        for rec in self.run.experiments:
            if rec.status in STATUSES:  # a deletion cut short by a kill (on a cluster node: lost with it)
                self.tidy_checkpoints(rec.n, rec.status)
            if rec.status is None:
                self.resume_experiment(rec)
            elif rec.status == "keep" and not rec.holdout_scored and rec.commit:  # stopped while it was scored
                runs = {r: _outcome_of(f) for r, f in rec.runs.items() if f.get("phase") == "evaluated"}
                if any(o.val_bpb is not None for o in runs.values()):
                    self.score_holdout(rec.n, rec.commit, runs)
        if baseline is None or baseline.status == "interrupted":
            self.queue_baseline(meta.get("base_commit") or self.git.head(), fresh=baseline is None)
        if run.experiments:
            self.journal.append(RunResumed(tag=self.config.tag, config=asdict(self.config)))

    def queue_baseline(self, commit: str, fresh: bool) -> None:
        """The branch point itself, run baseline_runs times: the first best, and the first noise estimate."""
        att = Attempt(0, "baseline", commit, "baseline", commit=commit)
        att.runs_wanted = self.baseline_runs()
        att.queued_runs = list(range(att.runs_wanted))
        self.attempts[0] = att
        self.next_n = max(self.next_n, 1)
        if fresh:
            self.journal.append(Proposed(n=0, parent=commit, description="baseline", hypothesis="",
                                         usage=Usage(), agent_seconds=0.0, fix_attempt=0))
            self.journal.append(Committed(n=0, commit=commit, parent=commit, ref=self.ref(0, 0), kind="baseline"))
            self.git.pin(self.ref(0, 0), commit)

    def resume_experiment(self, rec: ExperimentRecord) -> None:
        """An undecided experiment resumes from its commit (or its saved proposal): the agent's work,
        and its cost, are not thrown away."""
        kind = rec.kind or ("baseline" if rec.n == 0 else "agent")
        att = Attempt(rec.n, kind, rec.parent or self.best_commit(), rec.description, rec.hypothesis,
                      fix_attempt=rec.fix_attempts)
        if rec.commit is not None:
            # Built on what its commit says, whatever the journal last named as its parent: a commit
            # made on an older best is rebased before it runs, never run as if made on this one.
            att.commit, att.parent = rec.commit, self.git.resolve(f"{rec.commit}^") or att.parent
            done = {r: _outcome_of(fields) for r, fields in rec.runs.items() if fields.get("phase") == "evaluated"}
            wanted = max([r + 1 for r in rec.runs] + [self.baseline_runs() if kind == "baseline" else 1])
            att.outcomes, att.runs_wanted = done, wanted
            att.queued_runs = [r for r in range(wanted) if r not in done]
            self.display.say(f"resuming experiment {rec.n} from its commit {rec.commit[:7]}")
            self.attempts[rec.n] = att
            if not att.queued_runs:
                self.decide(att)
            return
        saved = self.exp_dir(rec.n) / self.proposal_name(rec.fix_attempts)
        if rec.phase in ("proposed", "running") and saved.exists():
            att.proposal = saved.read_bytes().decode("utf-8")  # as written: CRLF stays CRLF
            self.attempts[rec.n] = att
        elif rec.n > 0:
            self.to_ask.append((rec.n, rec.fix_attempts, "", ""))

    # --- limits and views ------------------------------------------------------------------------------
    def limit_reached(self) -> str:
        c = self.config
        if self.stop.requested:
            return "stop requested"
        if c.max_experiments is not None and self.decided_count() >= c.max_experiments:
            return f"reached --max-experiments {c.max_experiments}"
        if c.max_hours is not None and time.time() - (self.run.started_at or time.time()) >= c.max_hours * 3600:
            return f"reached --max-hours {c.max_hours:g}"
        if c.max_cost is not None:
            costs = [e.usage.cost_usd for e in self.run.experiments[-10:]]
            if self.run_usage.cost_usd + max(costs, default=0.0) > c.max_cost:
                return f"the next proposal could exceed --max-cost ${c.max_cost:.2f} (spent ${self.run_usage.cost_usd:.2f})"
        if shutil.disk_usage(self.repo).free < MIN_FREE_DISK_BYTES:
            self.fatal = BudgetExhausted(f"less than {MIN_FREE_DISK_BYTES >> 30} GiB of free disk at {self.repo}: "
                                         f"free some space, then `autoresearch resume --tag {c.tag}`")
            return "out of disk"
        return ""

    def room_for_more(self) -> bool:
        limit = self.config.max_experiments
        return limit is None or self.decided_count() + self.experiments_in_flight() < limit

    def held_back(self, att: Attempt) -> bool:
        """A proposal that would run past --max-experiments is not committed: a combine can take the
        last place while the agent still works on a proposal asked for earlier. It stays proposed in
        the journal, for a `resume` with a higher limit."""
        limit = self.config.max_experiments
        committed = {a.n for a in self.attempts.values() if a.n > 0 and a.kind != "best" and a.commit and a.n != att.n}
        return limit is not None and self.decided_count() + len(committed) >= limit

    def decided_count(self) -> int:
        return sum(1 for e in self.run.experiments if e.n > 0 and e.status in STATUSES)

    def experiments_in_flight(self) -> int:
        """Experiments proposed, asked for or running (not the baseline)."""
        asked = self.proposer.in_flight() | {n for n, *_ in self.to_ask}
        return len({a.n for a in self.attempts.values() if a.n > 0 and a.kind != "best"} | asked)

    def waiting_for_slots(self) -> int:
        """Experiments that will want a slot: asked for, ready, queued or training (not those only
        being evaluated, which no longer hold one)."""
        asked = self.proposer.in_flight() | {n for n, *_ in self.to_ask}
        holding = {a.n for a in self.attempts.values()
                   if a.n > 0 and (a.queued_runs or a.commit is None or "running" in a.running.values())}
        return len(holding | asked)

    def runs_in_flight(self) -> bool:
        return any(att.running for att in self.attempts.values()) or bool(self.holdouts_pending)

    def baseline_decided(self) -> bool:
        return not any(a.kind == "baseline" for a in self.attempts.values())

    def fail(self, error: AutoresearchError) -> None:
        """Wind down: no new work, the runs in flight finish and are recorded, then the error ends the run."""
        self.fatal = self.fatal or error
        self.stopping = self.stopping or str(error)

    def context(self, n: int, last_failure: str, crashed: str) -> Context:
        best = self.best_commit()
        train_py = self.git.show(best, EDITABLE).decode("utf-8", errors="replace") if self.target.builtin else ""
        editable = {} if self.target.builtin else json.loads(self.proposal_text(best))
        in_flight = tuple(InFlight(a.n, _state_of(a), a.description, a.hypothesis)
                          for a in sorted(self.attempts.values(), key=lambda a: a.n)
                          if a.n != n and a.n > 0 and a.kind != "best")
        in_flight += tuple(InFlight(m, "proposing") for m in sorted(self.proposer.in_flight()) if m != n)
        conflict = self.conflicts.pop(n, "")
        return Context(
            repo=self.repo, program=_read(self.repo / self.target.program), train_py=train_py, editable=editable,
            metric=("-" if self.target.higher_is_better else "") + self.target.metric,
            history=tuple(self.history()), best_val_bpb=self.best_mean(), best_commit=best[:7],
            notes_path=self.dir / "notes.md",
            run_dir=self.exp_dir(n), last_failure=last_failure, fix_of=crashed if last_failure else "",
            budget_seconds=self.config.budget, in_flight=in_flight, conflict=conflict,
            remaining_cost_usd=None if self.config.max_cost is None else self.config.max_cost - self.run_usage.cost_usd)

    def history(self) -> list[HistoryItem]:
        decided = self.run.decided
        recent = {e.n for e in decided[-DIFFS_IN_HISTORY:]}
        return [HistoryItem(number=e.n, commit=(e.commit or "")[:7], status=e.status or "", val_bpb=e.val_bpb,
                            best_before=e.best_before, memory_gb=e.memory_gb, description=e.description,
                            hypothesis=e.hypothesis, reason=e.reason, parent=(e.parent or "")[:7],
                            diff=_read(self.exp_dir(e.n) / "diff.patch") if e.n in recent else "")
                for e in decided]

    def best_commit(self) -> str:
        if self.best is not None and self.best.commit:
            return self.best.commit
        return self.run.meta.get("base_commit") or self.git.head()

    def best_scores(self, hardware: str = "") -> list[float]:
        """The best's scores on this hardware (every run when hardware is unknown) that results are
        compared with: the runs that made it the best are left out once it has others (Policy.comparable)."""
        if self.best is None:
            return []
        scores = self.best.scores_by_run()
        if hardware:
            scores = {i: v for i, v in scores.items() if _hardware_key(self.best.runs[i].get("hardware")) in (hardware, "")}
        return draws(Policy.comparable(scores, self.best.decided_through, self.best.kind), self.harness_varies())

    def best_mean(self) -> float | None:
        """The best's score as measured so far: the mean of its runs that results are compared with,
        so what is shown is what they are held to."""
        scores = self.best_scores()
        return fmean(scores) if scores else self.best.val_bpb if self.best is not None else None

    def compared_with_best(self) -> int:
        """Results judged against the best kept commit so far (its growth runs follow this)."""
        best = self.best
        if best is None or best.decided_order is None:
            return 0
        return sum(1 for e in self.run.experiments
                   if e.status == "discard" and (e.decided_order or -1) > best.decided_order)

    def noise(self) -> Noise:
        return measured_noise((e.scores() for e in self.run.experiments if e.status in ("keep", "discard")),
                              self.harness_varies())

    def harness_varies(self) -> bool:
        """Whether repeats of one commit differ here. The baseline's runs tell, unless it learned
        nothing: an untrained model scores chance on every seed, which says nothing of the harness."""
        baseline = self.run.by_n.get(0)
        return repeats_differ(baseline.scores() if baseline else [], self.baseline_learned_nothing())

    def baseline_learned_nothing(self) -> bool:
        return targets.baseline_learned_nothing(self.target.view, self.run.by_n.get(0))

    def baseline_runs(self) -> int:
        if self.config.baseline_runs is not None:
            return self.config.baseline_runs
        return 3 if len(self.executor.slot_names()) > 1 else 2

    def measure_allowance(self) -> None:
        """Start-up allowance for every later run, measured on the baseline's own start-up."""
        base = self.run.by_n.get(0)
        walls = [float(f["train_seconds"]) for f in (base.runs.values() if base else ())
                 if isinstance(f.get("train_seconds"), (int, float))]
        if walls:
            allowance = startup_allowance_from(max(walls), self.config.budget)
            self.allowance = min(allowance, self.config.timeout - self.config.budget)
        self.eval_limits = eval_limits_from([f["timings"] for f in (base.runs.values() if base else ())
                                             if isinstance(f.get("timings"), dict) and not f.get("reason")])

    def seed(self, n: int, run: int) -> int:
        return run_seed(self.config.seed_key, self.config.tag, n, run)

    def tidy_checkpoints(self, n: int, status: str) -> None:
        keep = self.config.keep_checkpoints
        if keep == "all" or status == "keep":  # a kept one's goes after its holdout score, with "none"
            return
        folders = sorted(self.exp_dir(n).iterdir()) if self.exp_dir(n).is_dir() else []
        for folder in [self.exp_dir(n), *folders]:  # its runs' folders, and an older layout's one
            if folder.is_dir() and not folder.is_symlink():
                remove_tree(folder / "ckpt")
        rec = self.run.by_n.get(n)  # and those its runs left on cluster nodes
        self.executor.discard_checkpoints([run.get("hardware") or {} for run in rec.runs.values()] if rec else [])

    def protected_hashes(self) -> dict[str, str]:
        if self.target.builtin:
            return guard.protected_hashes(self.repo)
        return guard.target_protected_hashes(self.repo, self.target)

    def write_result(self, rec: ExperimentRecord) -> None:
        if self.target.builtin:
            append_result(self.results, rec)
        else:  # the metric under its own name and sign: the small file is rewritten whole
            atomic_write(self.results, targets.results_text(self.target, self.run))

    def proposal_name(self, attempt: int) -> str:
        name = _proposal_name(attempt)
        return name if self.target.builtin else name.removesuffix(".py") + ".json"

    def check_git(self) -> list[str]:
        """The run must not have moved the branch or HEAD, or edited the tree."""
        found = []
        if self.git.current_branch() != self.branch:
            found.append(f"the run switched branches (now {self.git.current_branch()})")
            self.git.checkout(self.branch)
        if self.git.head() != self.best_commit() and self.best is not None:
            found.append("the run moved the branch")
        if dirty := self.git.dirty():
            found.append(f"the run changed tracked files: {', '.join(dirty[:3])}")
        if found:
            self.git.reset_hard(self.best_commit())
        return found

    def ref(self, n: int, attempt: int) -> str:
        return f"{gitops.REF_PREFIX}{self.config.tag}/{n:04d}" + (f".fix{attempt}" if attempt else "")

    def exp_dir(self, n: int) -> Path:
        return experiment_dir(self.repo, self.config.tag, n)

    def run_folder(self, n: int, run: int) -> Path:
        """Where a run's logs and checkpoint are kept: the experiment's folder, run<k>/ for later runs."""
        return self.exp_dir(n) if run == 0 else self.exp_dir(n) / f"run{run}"

    def file_run(self, job: Job) -> None:
        """Move a run's logs and checkpoint from its token-named work folder to its run folder (a
        rerun after a resume replaces what its interrupted try left there)."""
        work, home = job.spec.exp_dir, self.run_folder(job.n, job.run)
        try:
            home.mkdir(parents=True, exist_ok=True)
            for item in sorted(work.iterdir()) if work.is_dir() else ():
                dest = home / item.name
                if dest.is_dir() and not dest.is_symlink():
                    remove_tree(dest)
                item.replace(dest)
            remove_tree(work)
        except OSError as e:  # whatever a run left in its folder, the daemon goes on
            self.display.say(f"warning: could not file run {job.run} of #{job.n:04d} from {work}: {e}")

    def on_line(self, job: Job):
        def watch(line: str) -> None:
            if (loss := last_loss(line)) is not None:
                for view in self.slot_view.values():
                    if view.get("n") == job.n and view.get("run") == job.run:
                        view["loss"] = loss

        return watch

    def write_state(self, phase: str = "") -> None:
        """The live view `status` reads: cheap, atomic, never the source of truth."""
        now = time.time()
        if not phase and now - self.state_written < STATE_EVERY_S:
            return
        self.state_written = now
        since = self.first_dispatch or now

        def busy(name: str, view: dict) -> float:  # the runs done, and the one training now so far
            training = now - view["since"] if view.get("n") is not None and view.get("since") else 0.0
            return min(1.0, round((self.busy_seconds.get(name, 0.0) + training) / max(now - since, 1e-9), 3))

        slots = [{"slot": name, **view, "busy_share": busy(name, view)} for name, view in self.slot_view.items()]
        evaluating = [{"n": n, "run": r, "since": t} for (n, r), t in sorted(self.eval_since.items())]
        holdouts = [{"n": n, "since": t} for n, t in sorted(self.holdouts_pending.items())]
        try:  # a full disk costs `status` its freshness; the journal says whether the run can go on
            atomic_write(self.state_path, json.dumps({
                "pid": os.getpid(), "tag": self.config.tag, "phase": phase or ("stopping" if self.stopping else "running"),
                "updated": now, "budget": self.config.budget, "slots": slots, "evaluating": evaluating,
                "holdouts": holdouts,
                "proposing": sorted(self.proposer.in_flight()), "waiting": self.waiting,
                "agent_waits_on": self.agent.waiting_on() if hasattr(self.agent, "waiting_on") else "",
                "waiting_since": self.waiting_since, "first_dispatch": self.first_dispatch,
                "graceful_stop": self.stop.graceful, "stopping": self.stopping}))
        except OSError:
            pass
        if self.display.tty:
            live = [v for v in self.slot_view.values() if v]
            if live:
                v = live[0]
                self.display.live(v["n"], v["phase"], now - v["since"], self.config.budget, v.get("loss"))


class _FoldingJournal(Journal):
    """The journal, with the run it describes folded as each event is written: the controller never
    re-reads the file to know where it stands."""

    run: RunRecord | None = None

    def append(self, event: Event) -> Event:
        written = super().append(event)
        if self.run is not None:
            apply_event(self.run, written)
        return written


def _check_metric(outcome: RunOutcome, allow_negative: bool = False) -> None:
    """A score that is not a finite number is a crash of the experiment, never of the daemon (bits per
    byte are never negative; a custom target's metric, or its negation when higher is better, may be)."""
    for split, value in list(outcome.scores.items()):
        if (not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf"))
                or (value < 0 and not allow_negative)):
            outcome.scores, outcome.reason = {}, f"eval: impossible {split} score {value!r}"
            return


def run_seed(key: str, tag: str, n: int, run: int) -> int:
    """The harness's seed for one run: different for every run, fixed by the night's secret key,
    tag, experiment and run. A run sees its seed, never the key, so the seed cannot tell it which run
    it is. An empty key gives the seeds of the tag alone, which anyone can work out."""
    what = f"{tag}/{n}/{run}".encode()
    if not key:
        return zlib.crc32(what) & 0x7FFFFFFF
    return int.from_bytes(hmac.new(key.encode(), what, hashlib.sha256).digest()[:4], "big") & 0x7FFFFFFF


def _drop_scratch(exp_dir: Path) -> None:
    """Keep a run's logs and checkpoint, not its scratch copies (nor touch its repeats' folders)."""
    for sub in exp_dir.iterdir() if exp_dir.is_dir() else ():
        if sub.is_dir() and sub.name != "ckpt" and not sub.name.startswith("run"):
            remove_tree(sub)


def _hardware_key(hardware: dict | None) -> str:
    """What makes two runs comparable: a cluster node's label, else the GPU model, else the CPU."""
    hardware = hardware or {}
    return str(hardware.get("label") or hardware.get("gpu") or hardware.get("cpu") or "")


def _outcome_of(fields: dict[str, Any]) -> RunOutcome:
    """A run's outcome as the journal recorded it (on resume)."""
    scores = fields.get("scores") or ({"val": fields["val_bpb"]} if fields.get("val_bpb") is not None else {})
    return RunOutcome(scores=dict(scores), reason=fields.get("reason", ""), summary=fields.get("summary") or {},
                      hardware=fields.get("hardware") or {},
                      train_seconds=float(fields.get("train_seconds") or 0.0),
                      eval_seconds=float(fields.get("eval_seconds") or 0.0))


def _state_of(att: Attempt) -> str:
    if any(p == "training" or p == "running" for p in att.running.values()):
        return "running"
    if att.running:
        return "evaluating"
    return "queued"


def _proposal_name(attempt: int) -> str:
    return f"proposal{'' if not attempt else f'.fix{attempt}'}.py"


def _next_event(events: queue.Queue, timeout: float) -> object | None:
    try:
        return events.get(timeout=timeout)
    except queue.Empty:
        return None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


