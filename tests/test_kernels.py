"""Compiled kernels: every run starts from a private copy of the baseline's; no experiment's reach another.

daemon_kit's `compiling` train.py stands in for torch.compile: it lists what it finds in its
inductor cache folder, then writes a file of its own there, as a compiler that fills its cache would.
"""
from __future__ import annotations

from pathlib import Path

from daemon_kit import compiling, git, make_repo, run_cli

from loop.journal import experiment_dir, run_dir


def test_runs_start_from_the_baselines_kernels_and_leave_none_behind(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    baseline = (repo / "train.py").read_text()
    (repo / "train.py").write_text(compiling(baseline, "baseline"))
    git(repo, "commit", "-qam", "a train.py that compiles")
    queue = tmp_path / "queue"
    queue.mkdir()
    # The first experiment fills its cache with a kernel of its own (a poisoned one, say).
    (queue / "01.py").write_text(compiling(baseline, "poison").replace("LR = 0.02", "LR = 0.03"))
    (queue / "02.py").write_text(compiling(baseline, "second").replace("LR = 0.02", "LR = 0.01"))
    done = run_cli(repo, "start", "--tag", "k", "--agent", "queue", "--queue", str(queue), "--budget", "2",
                   "--max-experiments", "2", "--lookahead", "0", "--baseline-runs", "1", "--best-runs", "1", env=env)
    assert done.returncode == 0, done.stderr + done.stdout

    def seen(n: int) -> str:
        log = (experiment_dir(repo, "k", n) / "train.log").read_text()
        return next(line for line in log.splitlines() if line.startswith("kernels seen:"))

    assert seen(0) == "kernels seen: []"
    assert seen(1) == seen(2) == "kernels seen: ['baseline']"  # not the first experiment's poison
    kept = run_dir(repo, "k") / "kernels"
    assert sorted(p.name for p in (kept / "inductor").iterdir()) == ["baseline"]


def test_a_runs_copy_of_the_kernels_carries_its_own_times(tmp_path: Path) -> None:
    """The kept folder's times would tell each run when the night began (an experiment's rough
    number); the run's copy is stamped with the time it was made."""
    import os
    import time

    from loop.runner import _kernel_caches

    kept = tmp_path / "kept"
    (kept / "inductor" / "ab").mkdir(parents=True)
    (kept / "inductor" / "ab" / "kernel.py").write_text("compiled")
    for path in (kept, *kept.rglob("*")):
        os.utime(path, (1_000_000, 1_000_000))
    before = time.time()
    _kernel_caches(kept, tmp_path / "run" / "kernels")
    copied = [tmp_path / "run" / "kernels", *(tmp_path / "run" / "kernels").rglob("*")]
    assert len(copied) == 4 and all(p.stat().st_mtime >= before - 1 for p in copied)


def test_baseline_runs_ending_together_keep_one_whole_copy(tmp_path: Path) -> None:
    """The baseline's runs on several slots finish together: the kept folder is one run's kernels,
    whole, never a mix or a part, and no scratch copy is left beside it."""
    import threading

    from loop.runner import keep_kernels

    for attempt in range(10):
        privates = []
        for name in ("a", "b", "c"):
            private = tmp_path / f"{attempt}-{name}"
            (private / "inductor").mkdir(parents=True)
            for i in range(100):
                (private / "inductor" / f"{name}{i}").write_bytes(bytes(2048))
            privates.append(private)
        kept = tmp_path / f"kept-{attempt}" / "kernels"
        start = threading.Barrier(len(privates))

        def keep(private: Path) -> None:
            start.wait()
            keep_kernels(private, kept)

        threads = [threading.Thread(target=keep, args=(p,)) for p in privates]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        names = sorted(p.name for p in (kept / "inductor").iterdir())
        assert any(names == sorted(f"{n}{i}" for i in range(100)) for n in "abc"), names[:5]
        assert [p.name for p in kept.parent.iterdir()] == ["kernels"]
