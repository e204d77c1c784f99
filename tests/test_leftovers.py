"""What a run leaves behind cannot end the daemon or reach past its folder: folders nested past
Python's recursion limit and PATH_MAX, folders with their permissions taken off, links to files
elsewhere, and a disk filled file by file (each file under the size limit)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest
from daemon_kit import MAIN

from loop.runner import Runner, RunSpec
from loop.trees import regular_files, remove_tree

DEPTH = 3000  # far past the recursion limit (1000); with these names, far past PATH_MAX too
NAME = "d" * 100


def nest(root: Path, depth: int) -> None:
    """`depth` folders, each inside the last, made by names relative to an open folder as a run can."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir(NAME, dir_fd=fd)
        child = os.open(NAME, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(os.open("bottom", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    os.close(fd)


@pytest.fixture(autouse=True)
def no_deep_leftovers(tmp_path: Path) -> Iterator[None]:
    """A failed test leaves no tree that pytest's own clean-up of old temporary folders trips on."""
    yield
    remove_tree(tmp_path / "run")


def planted(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A run's folder with all of it, and a file and a folder outside it that it links to."""
    victim, outside = tmp_path / "victim", tmp_path / "outside"
    victim.write_text("the daemon user's secret")
    victim.chmod(0o600)
    outside.mkdir()
    (outside / "keep.txt").write_text("not the run's")
    run = tmp_path / "run"
    run.mkdir()
    nest(run, DEPTH)
    (run / "nest").mkdir()
    (run / "nest" / "x").symlink_to(victim)
    (run / "nest" / "up").symlink_to(outside)
    (run / "nest").chmod(0o500)  # its entries cannot be removed until it is opened up again
    (run / "closed").mkdir()
    (run / "closed" / "inner").mkdir()
    (run / "closed" / "inner" / "f").write_text("x")
    (run / "closed").chmod(0)
    (run / "link_to_outside").symlink_to(outside)
    return run, victim, outside


def test_a_run_folder_of_any_shape_is_removed_without_touching_what_it_links_to(tmp_path: Path) -> None:
    run, victim, outside = planted(tmp_path)
    assert sorted(name for _, name in regular_files(run)) == ["bottom", "f", "link_to_outside", "up", "x"]
    assert remove_tree(run) and not os.path.lexists(run)
    assert victim.read_text() == "the daemon user's secret" and (victim.stat().st_mode & 0o777) == 0o600
    assert (outside / "keep.txt").read_text() == "not the run's"
    assert remove_tree(run)  # gone already: nothing to do
    (tmp_path / "a_link").symlink_to(outside)
    assert remove_tree(tmp_path / "a_link") and outside.is_dir()  # the link goes, never what it names


def test_removal_without_the_power_to_ignore_permissions(tmp_path: Path) -> None:
    """The daemon is usually no root: a folder whose write permission was taken off cannot be
    emptied until it is opened up again, and removal must do that, not give up (nor follow the link
    inside to open up what it names)."""
    run, victim, outside = planted(tmp_path)
    script = (f"import sys; sys.path[:0] = {[str(MAIN)]!r}\nfrom pathlib import Path\nfrom loop.trees import remove_tree\n"
              f"print(remove_tree(Path({str(run)!r})))")
    argv = [sys.executable, "-c", script]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop the power to ignore permissions")
        drop = "-dac_override,-dac_read_search,-fowner"
        argv = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
    assert not os.path.lexists(run)
    assert (victim.stat().st_mode & 0o777) == 0o600 and (outside / "keep.txt").exists()


FILLER = textwrap.dedent('''
    import os, time
    out = os.environ["AUTORESEARCH_OUT"]
    for i in range(64):  # 2 GiB in files of 32 MiB, each far under the size limit
        with open(f"{out}/fill-{i}", "wb") as f:
            for _ in range(32):
                f.write(bytes(1 << 20))
                f.flush()
    time.sleep(600)
''').encode()


# Space taken at once (fallocate), then gone: no look while it runs can see the disk full.
BURST = textwrap.dedent('''
    import os
    fd = os.open(os.environ["AUTORESEARCH_OUT"] + "/burst", os.O_WRONLY | os.O_CREAT, 0o644)
    os.posix_fallocate(fd, 0, 384 << 20)
''').encode()


@pytest.mark.parametrize("then", ["sleeps", "exits"])
def test_a_run_that_fills_the_disk_is_ended_before_the_daemon_runs_out(tmp_path: Path, then: str) -> None:
    """The floor is set 256 MiB below today's free space so that the test writes little; the
    daemon's own floor is 1 GiB of free disk. A run that fills it in a burst and exits before the
    watch looks again is caught as it ends."""
    exp = tmp_path / "runner" / "0001"
    exp.mkdir(parents=True)
    floor = shutil.disk_usage(exp).free - (256 << 20)
    pinned = {name: (MAIN / name).read_bytes() for name in ("prepare.py", "val.txt", "holdout.txt")}
    filler = FILLER if then == "sleeps" else BURST
    spec = RunSpec(filler, exp, budget=300.0, timeout=600.0, disk_floor=floor)
    outcome = Runner(tmp_path / "runner", pinned).train(spec)
    assert outcome.reason.startswith("disk: it left less than"), outcome.reason
    assert outcome.train_seconds < 300  # ended at the floor, not at its budget
    assert remove_tree(exp) and shutil.disk_usage(tmp_path).free > floor


SETID = textwrap.dedent('''
    import os, shutil
    out = os.environ["AUTORESEARCH_OUT"]
    os.makedirs(out + "/deep/er")
    for path, mode in ((out + "/sh", 0o4755), (out + "/deep/er/sh", 0o2755), ("sh", 0o6755)):
        shutil.copy("/bin/sh", path)
        os.chmod(path, mode)
        print(path, oct(os.stat(path).st_mode & 0o7777))
''').encode()


def test_no_set_id_file_a_run_made_outlives_it(tmp_path: Path) -> None:
    """A run's files are the daemon user's (root's, for a root daemon): a shell it copied and made
    set-id would hand that user to anyone who could run it. The bits are gone when it ends, and its
    folder is its owner's alone while it runs."""
    exp = tmp_path / "runner" / "0001"
    pinned = {name: (MAIN / name).read_bytes() for name in ("prepare.py", "val.txt", "holdout.txt")}
    outcome = Runner(tmp_path / "runner", pinned).train(RunSpec(SETID, exp, budget=30.0, timeout=60.0))
    assert "0o4755" in outcome.log_tail and "0o2755" in outcome.log_tail, outcome.log_tail  # it made them
    made = [exp / "ckpt" / "sh", exp / "ckpt" / "deep" / "er" / "sh", exp / "train" / "sh"]
    assert [oct(p.stat().st_mode & 0o7777) for p in made] == ["0o755"] * 3
    assert (exp.stat().st_mode & 0o777) == 0o700
