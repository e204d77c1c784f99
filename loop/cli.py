"""The `autoresearch` command: argument parsing and the one handler that maps errors to exits."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loop.agents import default_agent_name
from loop.errors import AutoresearchError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autoresearch", description="Autonomous ML research, one fixed-budget experiment at a time.")
    sub = p.add_subparsers(dest="command", required=True)

    def limits(sp: argparse.ArgumentParser, defaults: bool) -> None:
        d = (lambda value: value) if defaults else (lambda value: None)
        sp.add_argument("--agent", default=d(None), help="search | queue | anthropic | claude-code | module:Class")
        sp.add_argument("--queue", type=Path, help="folder the queue agent takes proposals from")
        sp.add_argument("--model", help="model for the anthropic or claude-code agent")
        sp.add_argument("--budget", type=float, default=d(300.0), help="training seconds per experiment")
        sp.add_argument("--timeout", type=float, default=d(600.0), help="hard limit per training run, seconds")
        sp.add_argument("--min-delta", type=float, default=d(0.0), help="keep only improvements larger than this")
        sp.add_argument("--max-experiments", type=int, help="stop after this many experiments (baseline not counted)")
        sp.add_argument("--max-hours", type=float, help="stop after this many hours")
        sp.add_argument("--max-cost", type=float, help="stop before the agent's spend could pass this many USD")
        sp.add_argument("--fix-attempts", type=int, default=d(2), help="chances the agent gets to fix a simple crash")

    s = sub.add_parser("start", help="start a new run on branch autoresearch/TAG")
    s.add_argument("--tag", required=True)
    s.add_argument("--detach", action="store_true", help="run in the background, logging to .autoresearch/daemon.log")
    limits(s, defaults=True)
    r = sub.add_parser("resume", help="continue a stopped or killed run")
    r.add_argument("--tag", required=True)
    limits(r, defaults=False)
    st = sub.add_parser("stop", help="finish the running experiment, then exit")
    st.add_argument("--now", action="store_true", help="kill the running experiment (journaled as interrupted)")
    sub.add_parser("status", help="what the daemon is doing and how the run goes")
    one = sub.add_parser("run", help="one experiment of the working tree as it is, git untouched")
    one.add_argument("--budget", type=float, default=300.0)
    one.add_argument("--timeout", type=float, default=600.0)
    rep = sub.add_parser("report", help="the morning report: summary, progress.png, report.md")
    rep.add_argument("--tag")
    rep.add_argument("--out", type=Path)
    rep.add_argument("--compare", nargs="+", default=[], metavar="TAG")
    chk = sub.add_parser("check", help="run the guard on a commit (default HEAD)")
    chk.add_argument("rev", nargs="?")
    return p


def dispatch(args: argparse.Namespace, argv: list[str]) -> int:
    from loop import control

    repo = Path.cwd()
    if args.command in ("start", "resume") and args.queue is not None and args.agent not in (None, "queue"):
        raise_usage("--queue goes with --agent queue")
    if args.command == "start":
        from loop.daemon import Config

        config = Config(tag=_tag(args.tag), agent=args.agent or default_agent_name(), budget=args.budget,
                        timeout=args.timeout, min_delta=args.min_delta, max_experiments=args.max_experiments,
                        max_hours=args.max_hours, max_cost=args.max_cost, fix_attempts=args.fix_attempts,
                        queue=str(args.queue.resolve()) if args.queue else None, model=args.model)
        return control.start(repo, config, args.detach, argv)
    if args.command == "resume":
        keys = ("agent", "budget", "timeout", "min_delta", "max_experiments", "max_hours", "max_cost", "fix_attempts", "model")
        overrides = {k: getattr(args, k) for k in keys} | {"queue": str(args.queue.resolve()) if args.queue else None}
        return control.resume(repo, _tag(args.tag), overrides)
    if args.command == "stop":
        return control.stop(repo, args.now)
    if args.command == "status":
        return control.status(repo)
    if args.command == "run":
        return control.run_once(repo, args.budget, args.timeout)
    if args.command == "report":
        from loop.report import report_command

        return report_command(repo, args.tag, args.out, args.compare)
    from loop.guard import check_command

    return check_command(repo, args.rev)


def _tag(tag: str) -> str:
    if not tag or not all(c.isalnum() or c in "-_." for c in tag) or tag.startswith("."):
        raise_usage(f"--tag {tag!r}: use letters, digits, '-', '_' and '.' only")
    return tag


def raise_usage(message: str) -> None:
    from loop.errors import UsageError

    raise UsageError(message)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    try:
        return dispatch(args, argv)
    except AutoresearchError as e:
        print(f"autoresearch: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
