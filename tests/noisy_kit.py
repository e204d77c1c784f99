"""A fake harness with noise of a known size, for tests and benchmarks of the keep rule.

Same contracts as daemon_kit's fast harness (prepare.py check/eval, AUTORESEARCH_OUT, the `---`
summary, val.txt pinned by checksum), but the score is known exactly: the TRUE score is a smooth
function of train.py's constants (`true_score`), and the evaluator adds Gaussian noise of size
NOISE drawn from the run's own seed. train.py saves AUTORESEARCH_SEED in its checkpoint for the
evaluator, so two runs of one commit differ exactly as two seeds of a real run do.

ORDER is the seed-like knob: it is in the checkpoint but not in the true score, so a change of it
alone is pure noise and any keep of one is a false keep.
"""
from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

from daemon_kit import add_holdout, fake_prepare, git, make_repo

from loop.agents.search import find_constants

# The true score, as source: the evaluator runs this text and the kit executes the same text, so
# the figure a benchmark calls "true" is exactly what the evaluator adds its noise to.
TRUE_SCORE_SOURCE = '''
def true_score(c):
    """Lower is better; the optimum, 1.0, is LR 0.005, WIDTH 32, DEPTH 6. ORDER plays no part."""
    return (1.0 + 0.5 * math.log10(c["LR"] / 0.005) ** 2 + 0.1 * math.log2(c["WIDTH"] / 32) ** 2
            + 0.01 * (c["DEPTH"] - 6) ** 2)
'''
KNOBS = ("LR", "WIDTH", "DEPTH", "ORDER")
# Seeds of the tag alone (a night's own key is random): every run of a test or a benchmark draws
# the same noise, and the rules a benchmark compares draw the same seeds.
PUBLIC_SEEDS = ("--seed-key", "")

NOISY_DOCSTRING = '"""Fake harness with noise: the real contracts, a known true score, noise from the run\'s seed."""'
NOISY_MODEL = '''    if cmd == "model":  # the run's score, noise included, on the pipe it was given
        proto = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        w = weights()
        if w is None:
            return 1
        bpb = true_score(w) + NOISE * random.Random(w["seed"]).gauss(0.0, 1.0)
        proto.write(f"{bpb:.6f}\\n")
        proto.flush()
        return 0
'''

NOISY_TRAIN = '''"""Fake train.py with noise: saves its constants and its seed as the "model"."""
import json, os, time
from pathlib import Path

from prepare import TIME_BUDGET

# One blank line between knobs: changes to two of them merge (a 3-way merge takes changes on
# neighbouring lines for a conflict), as they would in a real train.py's separate sections.
LR = 0.02  # learning rate

WIDTH = 8  # model width

DEPTH = 2  # number of layers

ORDER = 7  # order the batches are drawn in: changes a run, not its expected score
sleep_s = {sleep}  # seconds of "training" (lower case: not a hyperparameter to search)

if __name__ == "__main__":
    t0 = time.time()
    seed = int(os.environ.get("AUTORESEARCH_SEED", "0"))
    print("step 0 | loss 3.0000", flush=True)
    time.sleep(sleep_s)
    print("step 1 | loss 2.5000", flush=True)
    out = Path(os.environ.get("AUTORESEARCH_OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    model = {{"LR": LR, "WIDTH": WIDTH, "DEPTH": DEPTH, "ORDER": ORDER, "seed": seed}}
    (out / "model.pt").write_text(json.dumps(model))
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

_namespace: dict = {"math": math}
exec(TRUE_SCORE_SOURCE, _namespace)  # the evaluator's own function, so the two cannot drift apart


def true_score(constants: dict[str, float]) -> float:
    """The score a commit would get with no noise at all."""
    return _namespace["true_score"](constants)


def constants_of(train_py: str) -> dict[str, float]:
    """train.py's knobs, as the evaluator reads them from the checkpoint."""
    return {c.name: c.value for c in find_constants(train_py) if c.name in KNOBS}


def true_score_at(repo: Path, commit: str) -> float:
    return true_score(constants_of(git(repo, "show", f"{commit}:train.py")))


def make_noisy_repo(tmp_path: Path, noise: float, sleep: float = 0.0, holdout: bool = False) -> tuple[Path, dict[str, str]]:
    """daemon_kit's repo with the noisy harness committed in place of the quiet one (with
    daemon_kit's holdout.txt if `holdout`)."""
    repo, env = make_repo(tmp_path)
    sha = hashlib.sha256((repo / "val.txt").read_bytes()).hexdigest()
    constants = f"NOISE = {float(noise)!r}  # standard deviation of the evaluator's noise\n{TRUE_SCORE_SOURCE}"
    holdout_sha = add_holdout(repo) if holdout else ""
    (repo / "prepare.py").write_text(fake_prepare(sha, NOISY_DOCSTRING, constants, NOISY_MODEL, holdout_sha))
    (repo / "train.py").write_text(NOISY_TRAIN.format(sleep=sleep))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "noisy harness")
    subprocess.run([sys.executable, "prepare.py"], cwd=repo, env=env, check=True)
    return repo, env


def train_py_with(sleep: float = 0.0, **settings: float) -> str:
    """The harness's train.py with some knobs set, e.g. train_py_with(WIDTH=32)."""
    text = NOISY_TRAIN.format(sleep=sleep)
    for constant in sorted(find_constants(text), key=lambda c: -c.start):  # rewrite from the end
        if constant.name in settings:
            text = text[: constant.start] + repr(settings.pop(constant.name)) + text[constant.end :]
    if settings:
        raise ValueError(f"train.py has no knob {', '.join(settings)}")
    return text
