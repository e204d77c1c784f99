"""The `autoresearch` command: argument parsing and the one handler that maps errors to exits."""
from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata
from pathlib import Path

from loop.agents import default_agent_name
from loop.config import BEST_RUNS, Config, default
from loop.errors import AutoresearchError, SetupError, UsageError
from loop.screen import PrintableStream


def _version() -> str:
    try:
        return metadata.version("autoresearch")
    except metadata.PackageNotFoundError:
        return "unknown"


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in its help, except where there is none to show or the text says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    fmt = _Help
    p = argparse.ArgumentParser(prog="autoresearch", formatter_class=fmt,
                                description="Autonomous ML research: an agent edits train.py, fixed-budget runs "
                                            "score it on every GPU, what is really better is kept.")
    p.add_argument("--version", action="version", version=f"autoresearch {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def settings(sp: argparse.ArgumentParser, fresh: bool) -> None:
        """Run settings: `start` takes the defaults, `resume` keeps the run's own unless given."""
        d = default if fresh else (lambda name: None)
        sp.add_argument("--agent", default=None, help="search | queue | anthropic | claude-code | module:Class "
                        "(default: anthropic with ANTHROPIC_API_KEY set, else search)")
        sp.add_argument("--queue", type=Path, help="folder the queue agent takes proposals from")
        sp.add_argument("--model", help="model for the anthropic or claude-code agent")
        sp.add_argument("--budget", type=float, default=d("budget"), help="training seconds per run")
        sp.add_argument("--timeout", type=float, default=d("timeout"), help="hard limit per run's training, seconds")
        sp.add_argument("--min-delta", type=float, default=d("min_delta"), help="keep only gains larger than this")
        sp.add_argument("--max-experiments", type=int, help="stop after this many experiments (baseline not counted; "
                        "default: no limit)")
        sp.add_argument("--max-hours", type=float, help="stop after this many hours (default: no limit)")
        sp.add_argument("--max-cost", type=float, help="stop before the agent's spend could pass this many USD "
                        "(default: no limit)")
        sp.add_argument("--fix-attempts", type=int, default=d("fix_attempts"),
                        help="chances the agent gets to fix a simple crash (they cost no row)")
        sp.add_argument("--gpus", default=d("gpus"),
                        help="GPUs that get a slot: all, a count N, or indices 0,2,5 (0 alone is GPU 0)")
        sp.add_argument("--slots", type=int, help="CPU slots, for machines without a GPU (default 1)")
        sp.add_argument("--lookahead", type=int, help="proposals asked ahead of free slots (default: one per slot)")
        sp.add_argument("--keep-checkpoints", choices=("all", "kept", "none"), default=d("keep_checkpoints"),
                        help="checkpoints left on disk after each decision")
        sp.add_argument("--keep-z", type=float, default=d("keep_z"),
                        help="standard errors of the difference a confirmed improvement (the mean of two runs) must "
                        "clear to be kept; one run is kept at once only beyond 4")
        sp.add_argument("--confirm", choices=("auto", "never", "always"), default=d("confirm"),
                        help="rerun grey-zone results with a fresh seed (never: keep any gain, greedy)")
        sp.add_argument("--baseline-runs", type=int,
                        help="runs of the baseline, to measure the noise (default 3 with spare slots, else 2)")
        sp.add_argument("--best-runs", type=int,
                        help="runs a new best gets, with fresh seeds, before later results are compared with its "
                        f"mean rather than the lucky run that won (default {BEST_RUNS}; 1 with --confirm never); it "
                        "runs again as results pile up against it")
        sp.add_argument("--ray", metavar="ADDRESS", help="run experiments as tasks on a Ray cluster (auto: the "
                        "cluster this machine is part of); needs pip install -e '.[ray]'")
        sp.add_argument("--screen-on", metavar="LABEL", help="with --ray: hardware label for first runs")
        sp.add_argument("--confirm-on", metavar="LABEL", help="with --ray: hardware label for confirmation runs")
        sp.add_argument("--fetch-checkpoints", action="store_true", default=None,
                        help="with --ray: bring each run's checkpoint back here (default: it stays on its node, "
                        "where it is journaled)")
        sp.add_argument("--target", metavar="FILE", help="the target's TOML file (default: autoresearch.toml at the "
                        "root if there is one, else the builtin train.py experiment)")

    s = sub.add_parser("start", formatter_class=fmt, help="start a new run on branch autoresearch/TAG")
    s.add_argument("--tag", required=True, help="the run's name: its branch is autoresearch/TAG")
    s.add_argument("--detach", action="store_true", help="run in the background, logging to .autoresearch/daemon.log")
    s.add_argument("--seed-key", metavar="KEY", help="secret the runs' seeds are derived from (default: a new random "
                   "one, kept in the journal, which no run can read); the same key and tag draw the same seeds; '' "
                   "derives them from the tag alone, which lets a run work out which run it is")
    settings(s, fresh=True)
    r = sub.add_parser("resume", formatter_class=fmt, help="continue a stopped or killed run where it left off",
                       description="Continue a stopped or killed run where it left off. It keeps the settings it "
                       "was started with; an option given here replaces that one setting.")
    r.add_argument("--tag", required=True, help="the run to continue")
    r.add_argument("--detach", action="store_true", help="run in the background, logging to .autoresearch/daemon.log")
    settings(r, fresh=False)
    st = sub.add_parser("stop", formatter_class=fmt, help="finish the experiments in flight, then exit")
    st.add_argument("--now", action="store_true", help="kill the runs in flight (journaled as interrupted)")
    st.add_argument("--target", metavar="FILE", help="stop the daemon of this target (default: the builtin's)")
    stat = sub.add_parser("status", formatter_class=fmt, help="what the daemon is doing and how the run goes")
    stat.add_argument("--tag", help="a run other than the latest")
    one = sub.add_parser("run", formatter_class=fmt, help="one experiment of the working tree as it is, git untouched")
    one.add_argument("--budget", type=float, default=default("budget"), help="training seconds")
    one.add_argument("--timeout", type=float, default=default("timeout"), help="hard limit on training, seconds")
    one.add_argument("--target", metavar="FILE", help="the target's TOML file (default: autoresearch.toml at the "
                     "root if there is one, else the builtin train.py experiment)")
    sub.add_parser("runs", formatter_class=fmt, help="list the runs of this repository")
    show = sub.add_parser("show", formatter_class=fmt, help="one experiment: what, why, outcome, diff, log tail")
    show.add_argument("number", type=int, help="the experiment's number (#0000 is the baseline), as results and "
                      "status show it")
    show.add_argument("--tag", help="default: the latest run")
    rep = sub.add_parser("report", formatter_class=fmt, help="the morning report: summary, progress.png, report.md")
    rep.add_argument("--tag", help="default: the latest run")
    rep.add_argument("--out", type=Path, help="folder for the report (default: .autoresearch/runs/TAG/report)")
    rep.add_argument("--compare", nargs="+", default=[], metavar="TAG",
                     help="other runs to set beside it (the comparison goes to .autoresearch/compare unless --out)")
    rep.add_argument("--x", choices=("experiment", "hours"), default="experiment",
                     help="the progress plot's axis: experiment number, or wall-clock hours (stops show as gaps)")
    chk = sub.add_parser("check", formatter_class=fmt, help="run the guard on a commit")
    chk.add_argument("rev", nargs="?", default="HEAD", help="the commit to check, against its parent")
    chk.add_argument("--target", metavar="FILE", help="the target's TOML file (default: the run's own for "
                     "autoresearch/TAG, else autoresearch.toml at the root, else the builtin)")
    for name, action in sub.choices.items():  # each command's --help opens with what it does
        if action.description is None:
            summary = next(a.help for a in sub._choices_actions if a.dest == name)
            action.description = (summary or "")[:1].upper() + (summary or "")[1:] + "."
    p.set_defaults(commands=sub.choices)  # a mistyped option is told with its own command's usage
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    args, unknown = parser().parse_known_args(argv)
    if unknown:
        args.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def dispatch(args: argparse.Namespace, argv: list[str]) -> int:
    repo = Path.cwd()
    if args.command in ("start", "resume") and args.queue is not None and args.agent not in (None, "queue"):
        raise UsageError("--queue goes with --agent queue")
    if args.command == "start":
        from loop.commands.start import start

        values = {k: v for k, v in _settings(args).items() if v is not None}
        if args.seed_key is not None:
            values["seed_key"] = args.seed_key
        config = Config(tag=_tag(args.tag), agent=args.agent or default_agent_name(), **values)
        return start(repo, config, args.detach, argv)
    if args.command == "resume":
        from loop.commands.start import resume

        return resume(repo, _tag(args.tag), {"agent": args.agent, **_settings(args)}, args.detach, argv)
    if args.command == "stop":
        from loop.commands.stop import stop

        return stop(repo, args.now, args.target)
    if args.command == "status":
        from loop.commands.status import status

        return status(repo, args.tag)
    if args.command == "run":
        from loop.commands.run import run_once

        if not args.budget > 0 or not args.timeout > 0:
            raise UsageError("--budget and --timeout must be positive numbers of seconds")
        return run_once(repo, args.budget, args.timeout, args.target)
    if args.command in ("runs", "show", "report"):  # from anywhere in the checkout, as the others
        repo = _views_root(repo)
    if args.command == "runs":
        from loop.commands.runs import runs_command

        return runs_command(repo)
    if args.command == "show":
        from loop.commands.show import show_command

        return show_command(repo, args.number, args.tag)
    if args.command == "report":
        from loop.report import report_command

        return report_command(repo, args.tag, args.out, args.compare, args.x)
    from loop.guard import check_command

    return check_command(repo, args.rev, args.target)


def _views_root(folder: Path) -> Path:
    """Where the runs a view reads are: the checkout's root; outside a checkout, this folder if it
    holds runs (a copy of one's .autoresearch, journals alone); else refused as `start` refuses."""
    from loop.gitops import Git
    from loop.journal import state_dir

    try:
        return Git(folder).root
    except SetupError:
        if (state_dir(folder) / "runs").is_dir():
            return folder
        raise


def _settings(args: argparse.Namespace) -> dict:
    keys = ("budget", "timeout", "min_delta", "max_experiments", "max_hours", "max_cost", "fix_attempts", "model",
            "gpus", "slots", "lookahead", "keep_checkpoints", "keep_z", "confirm", "baseline_runs", "best_runs", "ray",
            "screen_on", "confirm_on", "fetch_checkpoints", "target")
    values = {k: getattr(args, k) for k in keys}
    values["queue"] = str(args.queue.resolve()) if args.queue else None
    return values


def _tag(tag: str) -> str:
    if not tag or not all(c.isalnum() or c in "-_." for c in tag) or tag.startswith("."):
        raise UsageError(f"--tag {tag!r}: use letters, digits, '-', '_' and '.' only")
    if ".." in tag or tag.endswith((".", ".lock")):  # what git refuses in a branch name
        raise UsageError(f"--tag {tag!r}: git branch names cannot hold '..' or end in '.' or '.lock'")
    return tag


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # What the commands print carries text of runs and agents: no control sequence of theirs
    # reaches the terminal (the daemon's own live line is drawn by its Display, around this).
    if not isinstance(sys.stdout, PrintableStream):
        sys.stdout, sys.stderr = PrintableStream(sys.stdout), PrintableStream(sys.stderr)  # type: ignore[assignment]
    args = parse(argv)
    try:
        return dispatch(args, argv)
    except AutoresearchError as e:
        print(f"autoresearch: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `autoresearch status | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
