"""What evaluation costs next to training, as the daemon runs them (sandboxed), where that time goes,
and what the checked evaluation (a scorer and two model processes: main, then the reference) costs
against the floor (the model's own forward over every window, in one process, nothing checked) and
against the earlier evaluator (one model process, eight probes), all in one run on one checkpoint.

    python scripts/bench_eval.py [--budget 20] [--repeats 3] [--old-rev cc0b4ca]

Needs the training data prepared (`python prepare.py`). On a machine without a GPU this measures
the CPU default of train.py; the GPU default (12 layers, 1024-byte windows) needs a GPU machine.
"""
from __future__ import annotations

import argparse
import os
import re
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


FORWARD_ONLY = """
import sys, time
t0 = time.monotonic()
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
import prepare, train
model = train.build_model()
model.load_state_dict(torch.load(sys.argv[2], map_location="cpu", weights_only=True))
device = "cuda" if torch.cuda.is_available() else "cpu"
model = model.to(device).eval()
T = min(prepare.MAX_SEQ_LEN, getattr(train, "SEQ_LEN", prepare.MAX_SEQ_LEN))
windows, _ = prepare._windows(np.frombuffer(prepare.check_split("val"), dtype=np.uint8), T)
B = max(1, prepare.EVAL_TOKENS // T)
loaded = time.monotonic()
with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda"):
    for s in range(0, len(windows), B):
        x = torch.from_numpy(np.stack(windows[s : s + B]).astype(np.int64)).to(device)
        model(x).float().cpu()
print(f"{loaded - t0:.3f} {time.monotonic() - loaded:.3f}")
"""


def floor_seconds(model_dir: Path, checkpoint: Path) -> tuple[float, float]:
    """(start-up, forward) seconds of one unsandboxed process answering every window once."""
    done = subprocess.run([sys.executable, "-c", FORWARD_ONLY, str(model_dir), str(checkpoint / "model.pt")],
                          capture_output=True, text=True, check=True, env={**os.environ, "AUTORESEARCH_VAL": str(ROOT / "val.txt")})
    load, forward = (float(v) for v in done.stdout.split())
    return load, forward


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=20.0, help="training seconds")
    parser.add_argument("--repeats", type=int, default=3, help="evaluations of each kind (the median is shown)")
    parser.add_argument("--old-rev", default="cc0b4ca",
                        help="the commit whose evaluator to compare with ('none' to skip: a copy without git history)")
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
        new, old, floors = [], [], []
        score = old_score = ""
        for _ in range(args.repeats):
            outcome = runner.evaluate(spec, RunOutcome())
            if outcome.reason:
                print(f"evaluation failed: {outcome.reason}")
                return 1
            new.append(outcome.eval_seconds)
            score = f"val_bpb: {outcome.val_bpb:.6f}"
            if args.old_rev != "none":
                old_dir = root / "old"
                old_dir.mkdir(exist_ok=True)
                seconds, old_score = old_evaluation_seconds(args.old_rev, old_dir, exp / "ckpt")
                old.append(seconds)
            floors.append(floor_seconds(exp / "model", exp / "ckpt"))
            before = f"{old[-1]:.1f}s before, " if old else ""
            print(f"repeat {len(new)}: {new[-1]:.1f}s now, {before}floor {sum(floors[-1]):.1f}s "
                  f"(start-up {floors[-1][0]:.1f}s + forward {floors[-1][1]:.1f}s)", flush=True)
        first_load = re.search(r"first model loaded in ([0-9.]+)s; (\d+) requests", (exp / "eval-val.log").read_text())
    print(f"training: {trained.train_seconds:.1f}s wall for a {args.budget:g}s budget "
          f"({trained.summary.get('num_steps', '?')} steps)")
    now = statistics.median(new)
    load, forward = statistics.median(f[0] for f in floors), statistics.median(f[1] for f in floors)
    print(f"evaluation, sandboxed, scorer + main then reference (warmed behind its gate): median {now:.1f}s of {args.repeats} "
          f"({', '.join(f'{s:.1f}' for s in new)}); {score} on this val.txt")
    if first_load:
        print(f"  the last one: {first_load.group(1)}s for the first model process to load, {first_load.group(2)} requests")
    print(f"floor, one unsandboxed process, nothing checked: median {load + forward:.1f}s "
          f"(start-up {load:.1f}s, forward over every window {forward:.1f}s)")
    print(f"  so the checks, the second process and the sandboxes cost {now - load - forward:.1f}s "
          f"({(now - load - forward) / now:.0%} of the evaluation)")
    if old:
        print(f"evaluation at {args.old_rev}, unsandboxed, 1 model process: median {statistics.median(old):.1f}s "
              f"({', '.join(f'{s:.1f}' for s in old)}); {old_score} on its own val.txt")
    before = f", {statistics.median(old) / args.budget:.0%} before" if old else ""
    print(f"evaluation / budget: {now / args.budget:.0%} now{before}; "
          f"at other budgets (same model): " + ", ".join(f"{b:g}s {now / b:.0%}" for b in (30, 60, 300)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
