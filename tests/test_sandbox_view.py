"""What a run sees is an allow-list: another checkout of the project on the host is absent (also
through the real daemon), so are the secrets of /etc; the root and /dev take no files; only the
chosen GPU's device node is bound."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from daemon_kit import assert_invariants, folded, journal_events, make_repo, queue_proposal, read_results, run_cli
from sandbox_kit import boxed, needs_bwrap, outside  # noqa: F401  (outside: a fixture)

from loop import sandbox


def other_checkout(outside: Path) -> Path:
    """A second checkout of an experiment elsewhere on the host, with its own validation data."""
    other = outside / "other"
    other.mkdir()
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    (other / "val.txt").write_text("the other checkout's validation bytes\n")
    return other


@needs_bwrap
def test_another_checkout_and_etc_secrets_are_absent(tmp_path: Path, outside: Path) -> None:
    other = other_checkout(outside)
    repo = tmp_path / "repo"
    repo.mkdir()
    spec = sandbox.SandboxSpec(workdir=tmp_path / "work", hide=(repo,))
    code, log = boxed(sys.executable, f"""
        import os
        print("other:", os.path.exists({str(other)!r}), os.path.exists({str(other / 'val.txt')!r}))
        print("etc:", sorted(set(os.listdir("/etc")) & {{"shadow", "gshadow", "ssh", "sudoers"}}))
        for path in ("/planted", "/dev/planted", "/etc/planted"):
            try:
                open(path, "w").write("x"); print("wrote", path)
            except OSError:
                print("refused", path)
        open("/tmp/scratch", "w").write("x"); print("tmp writable")
    """, spec, tmp_path / "log")
    assert code == 0, log
    assert "other: False False" in log and "etc: []" in log
    assert "refused /planted" in log and "refused /dev/planted" in log and "refused /etc/planted" in log
    assert "tmp writable" in log


def test_only_the_chosen_gpu_node(tmp_path: Path) -> None:
    # No GPU here: the node selection runs on a directory of stand-in files, and the command line
    # is checked against what that selection returns for the real /dev.
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"):
        (dev / name).touch()
    names = lambda nodes: [p.name for p in nodes]  # noqa: E731
    assert names(sandbox.gpu_nodes((1,), dev)) == ["nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"]
    assert names(sandbox.gpu_nodes((0, 2), dev)) == ["nvidia0", "nvidia2", "nvidiactl", "nvidia-uvm",
                                                      "nvidia-uvm-tools"]
    assert len(sandbox.gpu_nodes(None, dev)) == 6
    if not sandbox.available():
        return
    argv = [sys.executable, "-c", "pass"]
    cmd = sandbox.wrap(argv, sandbox.SandboxSpec(workdir=tmp_path, gpu=True, gpu_devices=(1,)))
    bound = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--dev-bind"]
    assert bound == [str(p) for p in sandbox.gpu_nodes((1,))] and "/sys" in cmd
    cpu = sandbox.wrap(argv, sandbox.SandboxSpec(workdir=tmp_path))
    assert "--dev-bind" not in cpu and "/sys" not in cpu


@needs_bwrap
def test_another_checkout_through_the_daemon(tmp_path: Path, outside: Path) -> None:
    """An experiment that reads another checkout's val.txt is a crash with the reason; the branch
    stays on the best; the next experiment runs normally."""
    other = other_checkout(outside)
    repo, env = make_repo(tmp_path)
    base = (repo / "train.py").read_text()
    queue = tmp_path / "queue"
    # The file name is spliced so that the lint lets it through: this tests the sandbox behind it.
    peek = f"import pathlib as _pl\n_v = (_pl.Path({str(other)!r}) / ''.join(['val', '.txt'])).read_bytes()\n"
    peeking = base.replace("\nif __name__", "\n" + peek + "\nif __name__", 1)
    queue_proposal(queue, "01", peeking, "reads another checkout")
    queue_proposal(queue, "02", base.replace("LR = 0.02", "LR = 0.01"), "honest change")
    done = run_cli(repo, "start", "--tag", "o", "--agent", "queue", "--queue", str(queue), "--budget", "2",
                   "--fix-attempts", "0", "--max-experiments", "2", env=env, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    by_name = {e.description: e for e in folded(journal_events(repo, "o")).experiments}
    peeked = by_name["reads another checkout"]
    assert peeked.status == "crash", peeked
    assert peeked.reason.startswith("exit 1: FileNotFoundError") and "val.txt" in peeked.reason, peeked.reason
    assert by_name["honest change"].status == "keep"
    assert [row[3] for row in read_results(repo)] == ["keep", "crash", "keep"]
    assert_invariants(repo, "o")
