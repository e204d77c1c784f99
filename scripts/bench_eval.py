"""What evaluation costs next to training, as the daemon runs them (sandboxed), and what the
stronger evaluation (scorer + main/probe/canary model processes) costs against the earlier one
(one model process, eight probes), both measured here in one run on the same checkpoint.

    python scripts/bench_eval.py [--budget 20] [--repeats 3] [--old-rev cc0b4ca]

Needs the training data prepared (`python prepare.py`). On a machine without a GPU this measures
the CPU default of train.py; the GPU default (12 layers, 1024-byte windows) needs a GPU machine.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loop import sandbox  # noqa: E402
from loop.runner import Runner, RunOutcome, RunSpec  # noqa: E402


def old_evaluation_seconds(rev: str, work: Path, checkpoint: Path) -> tuple[float, str]:
    """Wall seconds of the earlier evaluator (`prepare.py eval` at rev), unsandboxed, on checkpoint."""
    for name in ("prepare.py", "val.txt", "train.py"):
        blob = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{name}"], capture_output=True, check=True).stdout
        (work / name).write_bytes(blob if name != "train.py" else (ROOT / "train.py").read_bytes())
    started = time.monotonic()
    done = subprocess.run([sys.executable, "prepare.py", "eval", "--checkpoint", str(checkpoint)], cwd=work,
                          capture_output=True, text=True)
    return time.monotonic() - started, done.stdout.strip().splitlines()[-2] if done.returncode == 0 else done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=20.0, help="training seconds")
    parser.add_argument("--repeats", type=int, default=3, help="evaluations of each kind (the median is shown)")
    parser.add_argument("--old-rev", default="cc0b4ca", help="the commit whose evaluator to compare with")
    args = parser.parse_args()
    if sandbox.gpu_present():
        print("a GPU is present: this measures train.py's GPU default")
    else:
        print("no GPU: this measures train.py's CPU default; the GPU default needs a GPU machine")
    pinned = {name: (ROOT / name).read_bytes() for name in ("prepare.py", "val.txt", "holdout.txt")}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        exp = root / "exp"
        runner = Runner(root / "repo", pinned)
        spec = RunSpec((ROOT / "train.py").read_bytes(), exp, args.budget, args.budget + 600)
        trained = runner.train(spec)
        print(f"trained: {trained.train_seconds:.1f}s wall", flush=True)
        if trained.reason:
            print(f"training failed: {trained.reason}")
            return 1
        new, old = [], []
        score = old_score = ""
        for _ in range(args.repeats):
            outcome = runner.evaluate(spec, RunOutcome())
            if outcome.reason:
                print(f"evaluation failed: {outcome.reason}")
                return 1
            new.append(outcome.eval_seconds)
            score = f"val_bpb: {outcome.val_bpb:.6f}"
            old_dir = root / "old"
            old_dir.mkdir(exist_ok=True)
            seconds, old_score = old_evaluation_seconds(args.old_rev, old_dir, exp / "ckpt")
            old.append(seconds)
            print(f"repeat {len(old)}: {new[-1]:.1f}s now, {old[-1]:.1f}s before", flush=True)
    print(f"training: {trained.train_seconds:.1f}s wall for a {args.budget:g}s budget "
          f"({trained.summary.get('num_steps', '?')} steps)")
    print(f"evaluation, sandboxed, 3 model processes: median {statistics.median(new):.1f}s of {args.repeats} "
          f"({', '.join(f'{s:.1f}' for s in new)}); {score} on this val.txt")
    print(f"evaluation at {args.old_rev}, unsandboxed, 1 model process: median {statistics.median(old):.1f}s "
          f"({', '.join(f'{s:.1f}' for s in old)}); {old_score} on its own val.txt")
    print(f"evaluation / budget: {statistics.median(new) / args.budget:.0%} now, "
          f"{statistics.median(old) / args.budget:.0%} before")
    return 0


if __name__ == "__main__":
    sys.exit(main())
