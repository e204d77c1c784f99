"""Test kit for the daemon: a real git repo with a fast fake harness, the CLI as a subprocess,
and the invariants every run must keep.

The fake harness honours the real contracts (prepare.py check/eval, AUTORESEARCH_OUT, the `---`
summary, val.txt pinned by checksum) without torch: "training" saves train.py's constants and
"evaluation" scores them with a smooth function that has an optimum, so a search can improve.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from loop.events import parse
from loop.journal import JOURNAL_NAME, RunRecord, fold, run_dir

MAIN = Path(__file__).resolve().parents[1]
VAL_TEXT = "fixed validation text for the fake harness\n" * 20
HOLDOUT_TEXT = "fixed holdout text the search never decides on\n" * 20

# The fake prepare.py, with three slots: its docstring, constants of its own, and how a model
# process answers (the score its checkpoint earns). The scorer and the data are common to all.
PREPARE_TEMPLATE = '''{docstring}
import hashlib, json, math, os, random, sys, time
from pathlib import Path

TIME_BUDGET = float(os.environ.get("AUTORESEARCH_TIME_BUDGET", "300"))
MAX_SEQ_LEN, VOCAB_SIZE = 64, 256
VAL_SHA256 = "{sha}"
HOLDOUT_SHA256 = "{holdout_sha}"  # empty: no holdout
HERE = Path(__file__).resolve().parent
{constants}

def data_dir():
    return Path(os.environ.get("AUTORESEARCH_CACHE", Path.home() / ".cache" / "autoresearch"))


def weights():
    """The model process's checkpoint, or None once it has said why not."""
    ckpt = Path(sys.argv[sys.argv.index("--checkpoint") + 1]) / "model.pt"
    try:
        return json.loads(ckpt.read_text())
    except (OSError, ValueError) as e:
        print(f"eval: checkpoint does not load: {{e}}", file=sys.stderr)
        return None


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else "prepare"
    val = Path(os.environ.get("AUTORESEARCH_VAL", HERE / "val.txt"))
    if cmd == "prepare":
        data_dir().mkdir(parents=True, exist_ok=True)
        (data_dir() / "train.bin").write_bytes(b"x" * 1000)
        return 0
    if cmd == "check":
        if not (data_dir() / "train.bin").exists():
            print(f"training data is not prepared in {{data_dir()}}: run `python prepare.py`")
            return 1
        if not val.exists() or hashlib.sha256(val.read_bytes()).hexdigest() != VAL_SHA256:
            print(f"{{val}} fails its checksum: restore it with `git checkout -- val.txt`")
            return 1
        print("ok")
        return 0
{model}    # The scorer: the split on stdin, the main model process's answer on the first pipe.
    split = sys.argv[sys.argv.index("--split") + 1] if "--split" in sys.argv else "val"
    if hashlib.sha256(sys.stdin.buffer.read()).hexdigest() != {{"val": VAL_SHA256, "holdout": HOLDOUT_SHA256}}[split]:
        print(f"eval: {{split}}.txt fails its checksum")
        return 1
    fds = sys.argv[sys.argv.index("--model-fds") + 1]
    control = int(sys.argv[sys.argv.index("--control-fd") + 1]) if "--control-fd" in sys.argv else None
    opened = time.monotonic()
    if control is not None:  # the runner starts a model process only when asked, one at a time
        os.write(control, b"main start\\n")
    answer = os.fdopen(int(fds.split(",")[0].split(":")[0]), "rb").readline().decode().strip()
    load = time.monotonic() - opened  # the fake model's start-up and its eval_sleep_s: what the profile bounds
    if control is not None:
        os.write(control, b"main done\\n")
    if not answer:
        print("eval: the main model process died")
        return 1
    if split == "holdout":  # the holdout moves against val: a decision that heeded it would show
        answer = f"{{3.0 - float(answer):.6f}}"
    print(f"eval_profile: load {{load:.3f}} first_answer 0.000 answers 0.000")
    print(f"{{split}}_bpb: {{answer}}")
    print("eval_seconds: 0.0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''

FAKE_MODEL = '''    if cmd == "model":  # answers with the score its constants earn, on the pipe it was given
        proto = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        sys.path.insert(0, str(HERE))
        import train
        time.sleep(getattr(train, "eval_sleep_s", 0.0))
        w = weights()
        if w is None:
            return 1
        bpb = 1.0 + (math.log10(w["LR"]) - math.log10(0.005)) ** 2 + (w["WIDTH"] - 16) ** 2 / 400 + (w["DEPTH"] - 4) ** 2 / 50
        proto.write(str(getattr(train, "forced_metric", f"{bpb:.6f}")) + "\\n")
        proto.flush()
        return 0
'''


def fake_prepare(sha: str, docstring: str = '"""Fake harness for tests: the real contracts, no torch."""',
                 constants: str = "", model: str = FAKE_MODEL, holdout_sha: str = "") -> str:
    """The fake harness's prepare.py, pinned to a val.txt (and a holdout.txt) by its checksum."""
    return PREPARE_TEMPLATE.format(sha=sha, docstring=docstring, constants=constants, model=model,
                                   holdout_sha=holdout_sha)


def add_holdout(repo: Path) -> str:
    """Give the fake harness in `repo` a holdout.txt (the caller commits it); returns its checksum
    for fake_prepare. Its score is 3 minus the val score, so it moves against val."""
    (repo / "holdout.txt").write_text(HOLDOUT_TEXT)
    return hashlib.sha256(HOLDOUT_TEXT.encode()).hexdigest()


FAKE_TRAIN = '''"""Fake train.py for tests: saves its constants as the "model"."""
import json, os, time
from pathlib import Path

from prepare import TIME_BUDGET

# One blank line between knobs: changes to two of them merge, as a proposal made ahead and rebased
# onto a new best that changed another knob would in a real train.py's separate sections.
LR = 0.02  # learning rate

WIDTH = 8  # model width

DEPTH = 2  # number of layers

sleep_s = {sleep}  # seconds of "training" (lower case: not a hyperparameter to search)
eval_sleep_s = {eval_sleep}  # seconds the fake evaluator takes

if __name__ == "__main__":
    t0 = time.time()
    print("step 0 | loss 3.0000", flush=True)
    time.sleep(sleep_s)
    print("step 1 | loss 2.5000", flush=True)
    out = Path(os.environ.get("AUTORESEARCH_OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.pt").write_text(json.dumps({{"LR": LR, "WIDTH": WIDTH, "DEPTH": DEPTH}}))
    print("---")
    print(f"training_seconds: {{min(time.time() - t0, TIME_BUDGET):.1f}}")
    print(f"total_seconds: {{time.time() - t0:.1f}}")
    print("peak_vram_mb: 1024.0")
    print("mfu_percent: 0.00")
    print("total_tokens_M: 0.0")
    print("num_steps: 2")
    print("num_params_M: 0.0")
    print(f"depth: {{DEPTH}}")
'''


COMPILES = '''    t0 = time.time()
    kernels = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    print("kernels seen:", sorted(p.name for p in kernels.glob("*")) if kernels.is_dir() else [], flush=True)
    kernels.mkdir(parents=True, exist_ok=True)
    (kernels / "{name}").write_text("compiled")
'''


def compiling(train_py: str, name: str) -> str:
    """train_py, made to stand in for torch.compile: it says which kernels its cache folder held at
    start ("kernels seen: [...]"), then adds one named `name`."""
    return train_py.replace("    t0 = time.time()\n", COMPILES.format(name=name), 1)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def make_repo(tmp_path: Path, harness: str = "fake", sleep: float = 0.0, eval_sleep: float = 0.0,
              holdout: bool = False) -> tuple[Path, dict[str, str]]:
    """A real git repo ready for `autoresearch start`; returns it and the environment to use.

    harness="fake": the fast fake harness above, with a holdout.txt if `holdout`. harness="real":
    prepare.py, train.py, val.txt and holdout.txt of this project (the caller points
    AUTORESEARCH_CACHE at prepared data).
    """
    repo = tmp_path / "repo"
    repo.mkdir()
    if harness == "real":
        for name in ("prepare.py", "train.py", "val.txt", "holdout.txt"):
            shutil.copy(MAIN / name, repo / name)
    else:
        (repo / "val.txt").write_text(VAL_TEXT)
        sha = hashlib.sha256(VAL_TEXT.encode()).hexdigest()
        (repo / "prepare.py").write_text(fake_prepare(sha, holdout_sha=add_holdout(repo) if holdout else ""))
        (repo / "train.py").write_text(FAKE_TRAIN.format(sleep=sleep, eval_sleep=eval_sleep))
    (repo / "program.md").write_text("Lower val_bpb within the budget. Edit train.py only.\n")
    shutil.copy(MAIN / ".gitignore", repo / ".gitignore")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "config", "user.name", "test")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "experiment repo")
    env = dict(os.environ)
    env.pop("ANTHROPIC_API_KEY", None)
    env["AUTORESEARCH_CACHE"] = str(tmp_path / "cache")
    env["PYTHONPATH"] = str(MAIN) + os.pathsep + env.get("PYTHONPATH", "")
    if harness == "fake":
        subprocess.run([sys.executable, "prepare.py"], cwd=repo, env=env, check=True)
    return repo, env


def run_cli(repo: Path, *args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loop.cli", *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=timeout)


def start_background(repo: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    log = open(repo.parent / "daemon.out", "ab")
    return subprocess.Popen([sys.executable, "-m", "loop.cli", *args], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)


def journal_events(repo: Path, tag: str) -> list[dict]:
    """The journal's lines as written (JSON objects); a torn last line is left out."""
    path = run_dir(repo, tag) / JOURNAL_NAME
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    return [json.loads(line) for line in lines if line.endswith("\n")]


def folded(entries: Iterable[dict]) -> RunRecord:
    """The run that journal lines (as journal_events gives them) fold into."""
    return fold(event for event in map(parse, entries) if event is not None)


def wait_for_event(repo: Path, tag: str, event: str, n: int | None = None, timeout: float = 60, poll: float = 0.01,
                   where: Callable[[dict], bool] = lambda ev: True) -> dict:
    """The first `event` (of experiment `n`, and for which `where` holds) once it is journaled."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ev in journal_events(repo, tag):
            if ev["event"] == event and (n is None or ev.get("n") == n) and where(ev):
                return ev
        time.sleep(poll)
    raise AssertionError(f"no {event} event for experiment {n} within {timeout}s")


def read_results(repo: Path) -> list[list[str]]:
    lines = (repo / "results.tsv").read_text().splitlines()
    assert lines[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    return [line.split("\t") for line in lines[1:]]


def queue_proposal(queue: Path, name: str, train_py: str, description: str | None = None) -> None:
    queue.mkdir(parents=True, exist_ok=True)
    if description is not None:
        (queue / f"{name}.txt").write_text(description + "\n")
    tmp = queue / f".{name}.tmp"
    tmp.write_text(train_py)
    tmp.rename(queue / f"{name}.py")  # atomic: the agent never sees half a file


def assert_invariants(repo: Path, tag: str) -> None:
    """results.tsv == the journal's decided experiments, refs exist, tree clean, tip == best kept."""
    run = folded(journal_events(repo, tag))
    decided = run.decided  # rows are in the order experiments were decided
    rows = read_results(repo)
    assert len(rows) == len(decided), (rows, [e.n for e in decided])
    for row, rec in zip(rows, decided):
        assert row[0] == (rec.commit or "")[:7] and row[3] == rec.status, (row, rec)
    assert len({e.n for e in decided}) == len(decided)
    refs = git(repo, "for-each-ref", "--format=%(refname) %(objectname)", f"refs/autoresearch/{tag}/")
    pinned = dict(line.split(" ") for line in refs.splitlines())
    for rec in run.experiments:
        if rec.commit:
            assert pinned.get(f"refs/autoresearch/{tag}/{rec.n:04d}") == rec.commit, rec.n
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == f"autoresearch/{tag}"
    best = run.best
    assert best is not None
    assert git(repo, "rev-parse", "HEAD") == best.commit
