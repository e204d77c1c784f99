"""The harness: deterministic corpus, checks, sources, resumable download, and an evaluator that
rejects broken or cheating models and computes bits per byte exactly."""
from __future__ import annotations

import hashlib
import http.server
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

MAIN = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(MAIN))
import prepare  # noqa: E402


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "prepare.py", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **env})


def test_builtin_corpus_is_pinned_and_deterministic() -> None:
    data, bits = prepare.generate(prepare.TRAIN_SEED, 200_000)
    again, bits2 = prepare.generate(prepare.TRAIN_SEED, 200_000)
    assert data == again and bits == bits2
    for name, (filename, sha, floor) in prepare.SPLITS.items():
        split = (MAIN / filename).read_bytes()
        assert hashlib.sha256(split).hexdigest() == sha, name
        assert prepare.VAL_BYTES <= len(split) < prepare.VAL_BYTES + 2000 and 0.5 < floor < 2.0
        assert split[:10_000] not in data  # from a seed of its own, not the training split's
    assert not hasattr(prepare, "VAL_SEED")  # the splits' seeds are not kept anywhere


def test_new_splits_come_from_seeds_nobody_keeps(tmp_path: Path) -> None:
    shutil.copy(MAIN / "prepare.py", tmp_path)
    made = []
    for _ in range(2):
        done = run(["new-splits"], tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        printed = dict(re.findall(r'^(\w+_SHA256) = "([0-9a-f]{64})"', done.stdout, re.M))
        floors = dict(re.findall(r"^(\w+_FLOOR) = ([0-9.]+)", done.stdout, re.M))
        assert set(printed) == {"VAL_SHA256", "HOLDOUT_SHA256"} and all(0.5 < float(v) < 2.0 for v in floors.values())
        files = {name: (tmp_path / name).read_bytes() for name in ("val.txt", "holdout.txt")}
        assert hashlib.sha256(files["val.txt"]).hexdigest() == printed["VAL_SHA256"]
        assert hashlib.sha256(files["holdout.txt"]).hexdigest() == printed["HOLDOUT_SHA256"]
        made.append(files)
    assert made[0]["val.txt"] != made[1]["val.txt"] and made[0]["val.txt"] != made[0]["holdout.txt"]


def test_builtin_prefix_checksum() -> None:
    data, _ = prepare.generate(prepare.TRAIN_SEED, 10_000)
    assert hashlib.sha256(data[:10_000]).hexdigest() == PINNED_PREFIX


PINNED_PREFIX = "a6170891f9b0532ab75899c365ecab0d2aa6d13ecea175905f19ef162a44d062"  # the first 10,000 bytes of the builtin training split


def test_prepare_is_idempotent_and_check_passes(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = run([], MAIN, AUTORESEARCH_CACHE=str(cache), AUTORESEARCH_BUILTIN_MB="1")
    assert first.returncode == 0, first.stdout + first.stderr
    digest = hashlib.sha256((cache / "train.bin").read_bytes()).hexdigest()
    second = run([], MAIN, AUTORESEARCH_CACHE=str(cache), AUTORESEARCH_BUILTIN_MB="1")
    assert "already prepared" in second.stdout
    assert hashlib.sha256((cache / "train.bin").read_bytes()).hexdigest() == digest
    assert run(["check"], MAIN, AUTORESEARCH_CACHE=str(cache)).returncode == 0


def test_check_fails_with_one_line(tmp_path: Path) -> None:
    missing = run(["check"], MAIN, AUTORESEARCH_CACHE=str(tmp_path / "none"))
    assert missing.returncode == 1 and missing.stdout.strip().count("\n") == 0
    assert "not prepared" in missing.stdout and "python prepare.py" in missing.stdout
    bad_val = tmp_path / "val.txt"
    bad_val.write_text("tampered")
    run([], MAIN, AUTORESEARCH_CACHE=str(tmp_path / "c"), AUTORESEARCH_BUILTIN_MB="0.1")
    tampered = run(["check"], MAIN, AUTORESEARCH_CACHE=str(tmp_path / "c"), AUTORESEARCH_VAL=str(bad_val))
    assert tampered.returncode == 1 and "fails its checksum" in tampered.stdout


def test_source_file_and_folder(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha text " * 2000)
    (src / "b.md").write_text("# beta\n" * 1000)
    (src / "c.jsonl").write_text("\n".join(json.dumps({"text": f"gamma {i}"}) for i in range(500)))
    pq.write_table(pa.table({"text": [f"delta {i}" for i in range(500)]}), src / "d.parquet")
    cache = tmp_path / "cache"
    folder = run(["--source", str(src)], MAIN, AUTORESEARCH_CACHE=str(cache))
    assert folder.returncode == 0, folder.stdout + folder.stderr
    train = (cache / "train.bin").read_bytes()
    assert b"alpha" in train and b"beta" in train and b"gamma" in train and b"delta" in train
    assert "kept val.txt" in folder.stdout  # a plain run never rewrites val.txt
    one = run(["--source", str(src / "a.txt")], MAIN, AUTORESEARCH_CACHE=str(tmp_path / "c2"))
    assert one.returncode == 0 and (tmp_path / "c2" / "train.bin").read_bytes().startswith(b"alpha")
    nothing = run(["--source", str(tmp_path / "nope")], MAIN, AUTORESEARCH_CACHE=str(cache))
    assert nothing.returncode == 1 and "no such file" in nothing.stdout


def test_force_val_writes_a_new_split(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(MAIN / "prepare.py", repo)
    shutil.copy(MAIN / "val.txt", repo)
    text = tmp_path / "mine.txt"
    text.write_text("my own words. " * 40000)
    done = run(["--source", str(text), "--force-val"], repo, AUTORESEARCH_CACHE=str(tmp_path / "c"))
    assert done.returncode == 0, done.stdout
    assert "not comparable" in done.stdout
    assert (repo / "val.txt").read_bytes().startswith(b"my own")
    assert run(["check"], repo, AUTORESEARCH_CACHE=str(tmp_path / "c")).returncode == 0


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Serves one file; the first request is cut off half way through."""

    payload = b""
    calls: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        start = 0
        if rng := self.headers.get("Range"):
            start = int(rng.split("=")[1].split("-")[0])
        self.calls.append(rng or "full")
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if len(self.calls) == 1:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.close()  # the connection drops mid-file
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_download_resumes_after_a_dropped_connection(tmp_path: Path) -> None:
    _Flaky.payload = ("resumable shard text\n" * 50_000).encode()
    _Flaky.calls = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        dest = prepare.download(f"{url}/shard.txt", tmp_path / "shard.txt",
                                expected_sha=hashlib.sha256(_Flaky.payload).hexdigest())
        assert dest.read_bytes() == _Flaky.payload
        assert _Flaky.calls[0] == "full" and _Flaky.calls[1].startswith("bytes=")
        # And through the command line, as a named corpus with the base URL pointed here.
        _Flaky.calls = []
        done = run(["--source", "tinystories"], MAIN, AUTORESEARCH_CACHE=str(tmp_path / "c"), AUTORESEARCH_DATA_URL=url)
        assert done.returncode == 0, done.stdout
        assert "interrupted" in done.stdout and len(_Flaky.calls) == 2
    finally:
        server.shutdown()


# --- the evaluator ----------------------------------------------------------------------------

MODEL_HEAD = '''
import torch
import torch.nn as nn
SEQ_LEN = 64

class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(256))

    def forward(self, idx):
        B, T = idx.shape
{body}

def build_model():
    return M()
'''


def eval_dir(tmp_path: Path, body: str, logits: list[float] | None = None,
             split: str = "val", seq_len: int = 64) -> subprocess.CompletedProcess:
    import torch

    work = tmp_path / "eval"
    work.mkdir(exist_ok=True)
    shutil.copy(MAIN / "prepare.py", work)
    (work / "train.py").write_text(MODEL_HEAD.format(body=body).replace("SEQ_LEN = 64", f"SEQ_LEN = {seq_len}"))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save({"logits": torch.tensor(logits or [0.0] * 256)}, ckpt / "model.pt")
    shutil.copy(MAIN / "holdout.txt", work)
    return run(["eval", "--checkpoint", str(ckpt), "--split", split], work, AUTORESEARCH_VAL=str(MAIN / "val.txt"))


CONSTANT = "        return self.logits.expand(B, T, 256)"


def test_bpb_matches_a_hand_computation(tmp_path: Path) -> None:
    import random

    rnd = random.Random(0)
    logits = [rnd.uniform(-2, 2) for _ in range(256)]
    done = eval_dir(tmp_path, CONSTANT, logits)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-2].startswith("val_bpb: ") and lines[-1].startswith("eval_seconds: ")
    got = float(lines[-2].split()[1])
    # By hand: a model with constant logits scores -log2 softmax(logits)[b] for every predicted byte
    # (every byte of val.txt but the first).
    log_z = math.log(sum(math.exp(v) for v in logits))
    counts = Counter((MAIN / "val.txt").read_bytes()[1:])
    bits = sum(n * (log_z - logits[b]) for b, n in counts.items()) / math.log(2)
    assert got == pytest.approx(bits / sum(counts.values()), abs=2e-6)


def test_uniform_model_scores_eight_bits(tmp_path: Path) -> None:
    done = eval_dir(tmp_path, CONSTANT)
    assert "val_bpb: 8.000000" in done.stdout


def test_rejects_a_model_that_peeks_ahead(tmp_path: Path) -> None:
    body = "        nxt = torch.roll(idx, -1, dims=1)\n        return torch.nn.functional.one_hot(nxt, 256).float() * 50"
    done = eval_dir(tmp_path, body)
    assert done.returncode == 1 and "not causal" in done.stdout


def test_a_model_caught_is_asked_no_more(tmp_path: Path) -> None:
    """The reference's answers are checked as they come: a peeking model is caught on its first
    batch of probes, and the reference is sent at most the two requests in flight after it, not
    the rest of its 200 probes."""
    calls = tmp_path / "calls"
    body = (f"        open({str(calls)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
            "        nxt = torch.roll(idx, -1, dims=1)\n        return torch.nn.functional.one_hot(nxt, 256).float() * 50")
    done = eval_dir(tmp_path, "        import os\n" + body, seq_len=1024)  # 8 windows a request: 25 of probes
    assert done.returncode == 1 and "not causal" in done.stdout, done.stdout
    by_process = Counter(calls.read_text().split())
    assert len(by_process) == 2, by_process  # main, then the reference
    reference = by_process[calls.read_text().split()[-1]]
    assert reference <= 1 + 1 + 2, by_process  # its canaries, the batch that caught it, two in flight


def test_rejects_a_model_that_reads_other_rows(tmp_path: Path) -> None:
    body = ("        nxt = torch.roll(idx, -1, dims=0)\n"
            "        return self.logits.expand(B, T, 256) + torch.nn.functional.one_hot(nxt, 256).float() * 0.1")
    done = eval_dir(tmp_path, body)
    # A window answered alone (the reference's first request) must match its answer in the stream.
    assert done.returncode == 1 and "answers depend on other windows" in done.stdout, done.stdout


def test_adding_a_constant_per_position_is_no_cheat(tmp_path: Path) -> None:
    """What is compared is what is scored: a shift of all 256 logits at a position changes nothing."""
    body = "        return self.logits.expand(B, T, 256) + torch.roll(idx, -1, dims=1)[..., None].float() * 3"
    done = eval_dir(tmp_path, body)
    assert done.returncode == 0 and "val_bpb: 8.000000" in done.stdout, done.stdout


def test_rejects_nan(tmp_path: Path) -> None:
    done = eval_dir(tmp_path, "        return self.logits.expand(B, T, 256) * float('nan')")
    assert done.returncode == 1 and "NaN" in done.stdout


def test_rejects_a_wrong_shape(tmp_path: Path) -> None:
    done = eval_dir(tmp_path, "        return self.logits.expand(B, T, 256)[:, :, :128]")
    assert done.returncode == 1 and "shape" in done.stdout


def test_train_code_never_runs_in_the_scoring_process(tmp_path: Path) -> None:
    """Forged metric lines and an early exit at import happen in the model process, not here."""
    body = ("        return self.logits.expand(B, T, 256)\n"
            "print('val_bpb: 0.000001')\nprint('eval_seconds: 0.0', flush=True)\nimport os\nos._exit(0)")
    done = eval_dir(tmp_path, body)
    assert done.returncode == 1 and "val_bpb: 0.000001" not in done.stdout
    assert done.stdout.startswith("eval: the main model process"), done.stdout  # the first one started


def test_holdout_split_is_scored_on_request(tmp_path: Path) -> None:
    done = eval_dir(tmp_path, CONSTANT, split="holdout")
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-2] == "holdout_bpb: 8.000000", done.stdout


def test_refuses_a_score_below_the_entropy_floor(tmp_path: Path) -> None:
    """A model that knows the text (here: reads it) and predicts each byte from the 24 before it is
    causal, and scores below what the true source could: the scorer refuses it."""
    body = ("        out = torch.full((B, T, 256), -12.0)\n"
            "        for b, row in enumerate(idx.tolist()):\n"
            "            for t in range(23, T):\n"
            "                for nxt, count in SEEN.get(bytes(row[t - 23 : t + 1]), {}).items():\n"
            "                    out[b, t, nxt] = math.log(count)\n"
            "        return out\n"
            "import math\n"
            f"TEXT = open({str(MAIN / 'val.txt')!r}, 'rb').read()\n"
            "SEEN = {}\n"
            "for i in range(len(TEXT) - 24):\n"
            "    ctx = SEEN.setdefault(TEXT[i : i + 24], {})\n"
            "    ctx[TEXT[i + 24]] = ctx.get(TEXT[i + 24], 0) + 1\n"
            "SEQ_LEN = 1024")  # long windows: the first 24 bytes of each are not predicted
    done = eval_dir(tmp_path, body)
    assert done.returncode == 1 and done.stdout.startswith("eval: below the entropy floor of val"), done.stdout


def test_refuses_a_scaled_peek(tmp_path: Path) -> None:
    """A large constant on every logit does not widen the tolerance: log-probabilities are compared."""
    body = "        return 1e4 + torch.nn.functional.one_hot(torch.roll(idx, -1, dims=1), 256).float() * 20"
    done = eval_dir(tmp_path, body)
    assert done.returncode == 1 and "not causal" in done.stdout, done.stdout


# Peeks on every third position, with logits as far apart as float32 allows: log-probabilities
# of -6e38 that overflow to -inf make every comparison NaN, and a NaN is never "too far".
HUGE_PEEK = ("        nxt = torch.nn.functional.one_hot(torch.roll(idx, -1, dims=1), 256).bool()\n"
             "        huge = torch.where(nxt, torch.tensor(3e38), torch.tensor(-3e38))\n"
             "        every_third = (torch.arange(T) % 3 == 0)[None, :, None]\n"
             "        return torch.where(every_third, huge, self.logits.expand(B, T, 256))")


def test_refuses_a_peek_hidden_in_logits_too_far_apart(tmp_path: Path) -> None:
    done = eval_dir(tmp_path, HUGE_PEEK)
    assert done.returncode == 1 and "not causal" in done.stdout, done.stdout


@pytest.mark.parametrize("n, T, B", [(2065, 128, 64), (256, 1024, 8), (7, 16, 512)])
def test_the_reference_never_sees_an_original_past_its_cut(n: int, T: int, B: int) -> None:
    """Canaries, probe originals and donors are apart: no window probed twice, none both a canary
    and probed, no probe's tail taken from another probe's original."""
    import numpy as np

    rng = np.random.default_rng(0)
    windows = [rng.integers(0, 256, T).astype(np.uint8) for _ in range(n)]
    canaries, probes = prepare._checks(windows, B, rng)
    originals = [i for i, _, _ in probes]
    assert len(set(originals)) == len(originals) and not set(originals) & set(canaries)
    assert len(canaries) == min(B, max(1, n // 4)) and len(probes) >= min(prepare.PROBES, n - len(canaries) - 1) - 2
    for i, cut, spliced in probes:
        assert (spliced[:cut] == windows[i][:cut]).all() and spliced[cut] != windows[i][cut]
        if cut <= T - 8:  # a tail of 8 random bytes or more names its donor
            donors = [d for d in range(n) if (windows[d][cut:] == spliced[cut:]).all()]
            assert len(donors) == 1 and donors[0] not in originals


def test_rejects_a_checkpoint_that_does_not_load(tmp_path: Path) -> None:
    work = tmp_path / "x"
    work.mkdir()
    done = eval_dir(work, CONSTANT)
    assert done.returncode == 0
    (work / "ckpt" / "model.pt").write_bytes(b"not a checkpoint")
    bad = run(["eval", "--checkpoint", str(work / "ckpt")], work / "eval", AUTORESEARCH_VAL=str(MAIN / "val.txt"))
    assert bad.returncode == 1 and "does not load" in bad.stdout


# Each model process holds a read lock on train.py, which they can all read, from the moment it
# imports train.py for as long as it lives; a process that finds another's lock knows it is not
# alone, and then could trade notes. Here it answers NaN so the evaluation fails loudly if two
# ever run train.py at once, its import included (a process warmed behind its gate has not).
NOT_ALONE = '''        global CALLS
        CALLS += 1
        if CALLS <= 3:
            time.sleep(1.0)  # a slow first answers: the next process starts meanwhile
        out = self.logits.expand(B, T, 256)
        return out if ALONE else out * float("nan")
import fcntl, os, struct, time
CALLS = 0
_fd = os.open(__file__, os.O_RDONLY)
_probe = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 7, 1, 0)
ALONE = struct.unpack("hhqqi", fcntl.fcntl(_fd, fcntl.F_OFD_GETLK, _probe))[0] == fcntl.F_UNLCK
fcntl.fcntl(_fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_RDLCK, 0, 7, 1, 0))'''


def test_model_processes_never_run_train_py_at_once(tmp_path: Path) -> None:
    """No two model processes run train.py together, so none can pass notes to another (a lock on a
    file they all can read is enough for that), standalone and as the daemon's runner does it."""
    import torch

    from loop.runner import Runner, RunOutcome, RunSpec

    (tmp_path / "standalone").mkdir()
    done = eval_dir(tmp_path / "standalone", NOT_ALONE)
    assert done.returncode == 0 and "val_bpb: 8.000000" in done.stdout, done.stdout
    exp = tmp_path / "runner" / "0001"
    (exp / "ckpt").mkdir(parents=True)
    torch.save({"logits": torch.zeros(256)}, exp / "ckpt" / "model.pt")
    pinned = {name: (MAIN / name).read_bytes() for name in ("prepare.py", "val.txt", "holdout.txt")}
    spec = RunSpec(MODEL_HEAD.format(body=NOT_ALONE).encode(), exp, budget=1.0, timeout=60.0)
    outcome = Runner(tmp_path / "runner", pinned).evaluate(spec, RunOutcome())
    assert outcome.reason == "" and outcome.scores == {"val": 8.0}, outcome.reason


# The first model process to import leaves a note for the next in which pages of a file in the
# checkpoint are cached; the next one finds it and answers NaN. The runner evicts the run's files
# between the two, so the note is gone. Main is the first: it cannot know what will be checked.
PAGE_NOTE = '''        out = self.logits.expand(B, T, 256)
        return out * float("nan") if SECOND else out
import os, sys, time
print("imported at", time.time(), file=sys.stderr, flush=True)
_fd = os.open(os.path.join(sys.argv[sys.argv.index("--checkpoint") + 1], "note.bin"), os.O_RDONLY)
try:
    os.preadv(_fd, [bytearray(4096)], 0, os.RWF_NOWAIT)  # succeeds only if the page is cached
    SECOND = True
except BlockingIOError:
    SECOND = False
    os.pread(_fd, 4096, 0)'''


def _uncached_file(path: Path) -> bool:
    """Write path and drop it from the page cache; False where the page cache cannot be read this way."""
    path.write_bytes(os.urandom(1 << 16))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT)
        return False  # cached straight after eviction: tmpfs, or no RWF_NOWAIT for buffered reads
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        time.sleep(0.2)  # a missed read may start reading ahead: let it land, then evict again
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def test_no_note_in_the_page_cache_reaches_the_second_process(tmp_path: Path) -> None:
    import torch

    from loop.runner import Runner, RunOutcome, RunSpec

    exp = tmp_path / "runner" / "0001"
    (exp / "ckpt").mkdir(parents=True)
    torch.save({"logits": torch.zeros(256)}, exp / "ckpt" / "model.pt")
    if not _uncached_file(exp / "ckpt" / "note.bin"):
        pytest.skip("this file system keeps every page cached (tmpfs) or cannot tell: no such channel here")
    pinned = {name: (MAIN / name).read_bytes() for name in ("prepare.py", "val.txt", "holdout.txt")}
    spec = RunSpec(MODEL_HEAD.format(body=PAGE_NOTE).encode(), exp, budget=1.0, timeout=60.0)
    outcome = Runner(tmp_path / "runner", pinned).evaluate(spec, RunOutcome())
    assert outcome.reason == "" and outcome.scores == {"val": 8.0}, outcome.reason
    imported = {role: float(re.search(r"imported at (\S+)", (exp / f"eval-{role}.log").read_text()).group(1))
                for role in ("main", "reference")}
    assert imported["main"] < imported["reference"]


def test_a_fifo_or_a_link_in_the_checkpoint_does_not_stall_the_runner(tmp_path: Path) -> None:
    """Training may leave anything in its checkpoint folder: a FIFO (opening it to read would block)
    and a link to / (walking it would visit the whole machine). The evaluation still finishes."""
    import threading

    import torch

    from loop.runner import Runner, RunOutcome, RunSpec

    exp = tmp_path / "runner" / "0001"
    (exp / "ckpt").mkdir(parents=True)
    torch.save({"logits": torch.zeros(256)}, exp / "ckpt" / "model.pt")
    os.mkfifo(exp / "ckpt" / "pipe")
    (exp / "ckpt" / "everything").symlink_to("/")
    pinned = {name: (MAIN / name).read_bytes() for name in ("prepare.py", "val.txt", "holdout.txt")}
    spec = RunSpec(MODEL_HEAD.format(body=CONSTANT).encode(), exp, budget=1.0, timeout=60.0)
    done: list[RunOutcome] = []
    worker = threading.Thread(target=lambda: done.append(Runner(tmp_path / "runner", pinned).evaluate(spec, RunOutcome())),
                              daemon=True)
    worker.start()
    worker.join(timeout=300)
    assert done and done[0].reason == "" and done[0].scores == {"val": 8.0}, done and done[0].reason


# Time a model process spends before answering, as training in the evaluator would: at import
# (loading) and in its first answer. The scorer measures both, from its gate opening and from the
# first request, and leaves out the trusted start-up before the gate (torch, the weights).
SLOW_START = '''        global FIRST
        if FIRST:
            FIRST = False
            time.sleep(2.0)
        return self.logits.expand(B, T, 256)
import time
FIRST = True
if __name__ != "__main__":
    time.sleep(3.0)'''


def test_the_scorer_times_what_a_model_does_before_it_answers(tmp_path: Path) -> None:
    import torch

    from loop.runner import Runner, RunOutcome, RunSpec, over_eval_limits

    exp = tmp_path / "runner" / "0001"
    (exp / "ckpt").mkdir(parents=True)
    torch.save({"logits": torch.zeros(256)}, exp / "ckpt" / "model.pt")
    pinned = {name: (MAIN / name).read_bytes() for name in ("prepare.py", "val.txt", "holdout.txt")}
    timings = {}
    for body in (CONSTANT, SLOW_START):
        spec = RunSpec(MODEL_HEAD.format(body=body).encode(), exp, budget=1.0, timeout=60.0)
        outcome = Runner(tmp_path / "runner", pinned).evaluate(spec, RunOutcome())
        assert outcome.reason == "" and outcome.scores == {"val": 8.0}, outcome.reason
        timings[body] = outcome.timings
    quick, slow = timings[CONSTANT], timings[SLOW_START]
    assert slow["model_load_s"] >= 3.0 and slow["first_answer_s"] >= 2.0, slow
    assert slow["answers_s"] >= slow["first_answer_s"] and quick["answers_s"] >= quick["first_answer_s"]
    assert slow["model_load_s"] - quick["model_load_s"] >= 2.5 and slow["first_answer_s"] - quick["first_answer_s"] >= 1.5
    assert over_eval_limits(slow, {"model_load_s": 2.9}).startswith("eval: a model process took")
    assert over_eval_limits(slow, {"model_load_s": 600.0, "first_answer_s": 600.0}) == ""
