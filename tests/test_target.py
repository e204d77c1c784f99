"""Targets declared in autoresearch.toml: the declaration, a Rust crate run by the daemon, and two
targets of one repository side by side.

The Rust example (examples/linreg-rust) builds offline with std only; the other targets are shell
scripts, so what is tested is the daemon's handling of a target, not a compiler's speed.
"""
from __future__ import annotations

import difflib
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from daemon_kit import MAIN, folded, git, journal_events, run_cli, start_background

from loop import target as targets
from loop.errors import UsageError

EXAMPLE = MAIN / "examples" / "linreg-rust"
IGNORED = "/.autoresearch/\n/target/\n/results*.tsv\n"


def new_repo(tmp_path: Path, files: dict[str, str], ignored: str = IGNORED) -> tuple[Path, dict[str, str]]:
    """A real git repository holding files, committed on main; and the CLI's environment."""
    repo = tmp_path / "repo"
    for path, text in {**files, ".gitignore": ignored}.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "config", "user.name", "test")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "target repo")
    env = dict(os.environ)
    env.pop("ANTHROPIC_API_KEY", None)
    env["PYTHONPATH"] = str(MAIN)
    return repo, env


def queue_diff(queue: Path, name: str, repo: Path, path: str, old: str, new: str, description: str,
               rev: str | None = None) -> None:
    """A unified diff of one file of the repository (at rev, else in the working tree), as a person would
    drop it into the queue."""
    before = git(repo, "show", f"{rev}:{path}") + "\n" if rev else (repo / path).read_text()
    assert old in before, old
    after = before.replace(old, new, 1)
    diff = "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        f"a/{path}", f"b/{path}", n=0))
    queue.mkdir(parents=True, exist_ok=True)
    (queue / f"{name}.txt").write_text(description + "\n")
    (queue / f".{name}.tmp").write_text(diff)
    (queue / f".{name}.tmp").rename(queue / f"{name}.diff")


def rows(repo: Path, name: str, metric: str) -> list[list[str]]:
    lines = (repo / name).read_text().splitlines()
    assert lines[0] == f"commit\t{metric}\tmemory_gb\tstatus\tdescription"
    return [line.split("\t") for line in lines[1:]]


def reasons(repo: Path, tag: str) -> dict[str, str]:
    return {e.description: e.reason for e in folded(journal_events(repo, tag)).decided}


# --- the declaration ---------------------------------------------------------------------------------
GOOD = """
editable = ["src/*.rs"]
protected = ["src/data.rs"]
[commands]
run = "true"
[metric]
name = "loss"
"""


def test_no_file_means_the_builtin_experiment(tmp_path: Path) -> None:
    found = targets.find(tmp_path, None)
    assert found is targets.BUILTIN and found.builtin
    assert (found.editable, found.metric, found.results) == (("train.py",), "val_bpb", "results.tsv")
    (tmp_path / targets.TARGET_FILE).write_text(GOOD)
    declared = targets.find(tmp_path, None)
    assert not declared.builtin and declared.is_editable("src/main.rs") and not declared.is_editable("src/data.rs")
    assert declared.is_protected(targets.TARGET_FILE)  # the declaration guards itself


@pytest.mark.parametrize("text, field", [
    (GOOD.replace('run = "true"', ""), "commands.run"),
    (GOOD.replace('name = "loss"', ""), "metric.name"),
    (GOOD.replace('editable = ["src/*.rs"]', ""), "editable"),
    (GOOD + 'better = "sideways"\n', "metric.better"),
    (GOOD.replace('protected = ["src/data.rs"]', 'protected = ["src/*.rs"]'), "both editable and protected"),
    (GOOD + "[run]\ntimeout = -1\n", "run.timeout"),
    (GOOD.replace("editable", "editables"), "unknown field editables"),
    (GOOD + '[[frozen]]\npath = "Cargo.toml"\nbegin = "a"\nend = "b"\n', "frozen region in Cargo.toml"),
    ("editable = [", "not valid TOML"),
])
def test_a_bad_declaration_is_one_line_naming_the_field(tmp_path: Path, text: str, field: str) -> None:
    (tmp_path / "t.toml").write_text(text)
    with pytest.raises(UsageError) as refused:
        targets.find(tmp_path, Path("t.toml"))
    message = str(refused.value)
    assert field in message and "\n" not in message and message.startswith("t.toml: ")


def test_start_refuses_a_bad_target_in_one_line(tmp_path: Path) -> None:
    repo, env = new_repo(tmp_path, {"t.toml": GOOD.replace('name = "loss"', ""), "src/main.rs": "fn main() {}\n"})
    (tmp_path / "q").mkdir()
    for args, words in ((("--target", "missing.toml"), "--target missing.toml: no such file"),
                        (("--target", "t.toml"), "t.toml: metric.name is missing")):
        refused = run_cli(repo, "start", "--tag", "x", "--agent", "queue", "--queue", str(tmp_path / "q"), *args,
                          env=env)
        assert refused.returncode == 2 and refused.stderr.startswith("autoresearch: ")
        assert words in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert git(repo, "branch", "--list", "autoresearch/*") == ""  # a refused start leaves nothing behind


def test_a_frozen_region_is_enforced_by_the_guard(tmp_path: Path) -> None:
    from loop import guard

    source = "fn train() {}\n// frozen: eval\nfn eval() { score() }\n// end frozen\n"
    text = GOOD + '[[frozen]]\npath = "src/main.rs"\nbegin = "// frozen: eval"\nend = "// end frozen"\n'
    repo, _ = new_repo(tmp_path, {"src/main.rs": source, "autoresearch.toml": text})
    target = targets.find(repo, None)
    base = git(repo, "rev-parse", "HEAD")
    outside = commit_change(repo, "src/main.rs", source.replace("train() {}", "train() { fast() }"))
    inside = commit_change(repo, "src/main.rs", source.replace("score()", "0.0"))
    assert guard.check_target_commit(repo, outside, base, {}, target) == []
    assert "frozen region" in guard.check_target_commit(repo, inside, outside, {}, target)[0]


def test_two_runs_at_once_never_share_a_build_cache(tmp_path: Path) -> None:
    from loop.target_runner import CacheSlot

    with CacheSlot(tmp_path, True) as first, CacheSlot(tmp_path, True) as second:
        assert first.path is not None and second.path is not None and first.path != second.path
    with CacheSlot(tmp_path, True) as again:  # both given back: the first directory, warm, is reused
        assert again.path == first.path
    with CacheSlot(tmp_path, False) as none:
        assert none.path is None


def example_files() -> dict[str, str]:
    """The Rust example's files, as a person copies them into a repository of their own."""
    return {str(p.relative_to(EXAMPLE)): p.read_text() for p in EXAMPLE.rglob("*")
            if p.is_file() and "target" not in p.relative_to(EXAMPLE).parts and p.name != ".gitignore"}


def commit_change(repo: Path, path: str, text: str) -> str:
    (repo / path).write_text(text)
    git(repo, "commit", "-q", "-am", f"change {path}")
    return git(repo, "rev-parse", "HEAD")


# --- a Rust crate through the daemon -------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("cargo") is None, reason="needs cargo (the Rust toolchain)")
def test_a_rust_target_runs_five_experiments_through_the_daemon(tmp_path: Path) -> None:
    repo, env = new_repo(tmp_path, example_files())
    queue = tmp_path / "queue"
    main, data = "src/main.rs", "src/data.rs"
    queue_diff(queue, "1", repo, main, "LEARNING_RATE: f64 = 0.001", "LEARNING_RATE: f64 = 0.01", "faster")
    queue_diff(queue, "2", repo, main, "let mut steps = 0usize;", 'let mut steps: usize = "none";', "type error")
    queue_diff(queue, "3", repo, data, "const NOISE: f64 = 0.1;", "const NOISE: f64 = 0.0;", "less noise")
    queue_diff(queue, "4", repo, main, "const BATCH: usize = 32;", "const BATCH: usize = 512;", "bigger batches")
    queue_diff(queue, "5", repo, main, "const MAX_EPOCHS: usize = 3;", "const MAX_EPOCHS: usize = 6;", "more epochs")
    done = run_cli(repo, "start", "--tag", "rust", "--agent", "queue", "--queue", str(queue), "--max-experiments", "5",
                   "--budget", "1", "--timeout", "60", "--slots", "1", "--baseline-runs", "1", "--fix-attempts", "0",
                   "--confirm", "never", env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    table = {row[4]: row for row in rows(repo, "results.tsv", "val_mse")}
    assert len(table) == 6 and table["baseline"][3] == "keep"
    assert table["faster"][3] == "keep" and float(table["faster"][1]) < float(table["baseline"][1])
    why = reasons(repo, "rust")
    assert table["type error"][3] == "crash" and why["type error"].startswith("build failed: error[E0308]")
    assert table["less noise"][3] == "crash" and why["less noise"].startswith("guard: src/data.rs changed")
    assert table["bigger batches"][3] == "discard"
    # the branch holds the best; the person's working tree and branch were never touched
    best = min((r for r in table.values() if r[3] == "keep"), key=lambda r: float(r[1]))
    assert git(repo, "rev-parse", "--short=7", "autoresearch/rust") == best[0]
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main" and git(repo, "status", "--porcelain") == ""
    assert "0.001" in (repo / main).read_text()
    assert list((repo / ".autoresearch" / "cache" / "linreg").glob("*/release/linreg"))  # cargo's cache, reused


# --- two targets in one repository ---------------------------------------------------------------------
ALPHA = """name = "alpha"
editable = ["alpha/params.sh"]
protected = ["alpha/score.sh"]
results = "results-alpha.tsv"
[commands]
run = "sh alpha/score.sh"
[metric]
name = "loss"
better = "lower"
"""
BETA = """name = "beta"
editable = ["beta/params.sh"]
results = "results-beta.tsv"
[commands]
run = ". beta/params.sh; echo $Y > $AUTORESEARCH_OUT/model"
evaluate = "sh beta/evaluate.sh"
[metric]
name = "accuracy"
better = "higher"
"""
TWO_TARGETS = {
    "alpha.toml": ALPHA, "alpha/params.sh": "X=6\n",
    "alpha/score.sh": '. alpha/params.sh\necho "loss: $(( (X - 3) * (X - 3) ))"\n',
    "beta.toml": BETA, "beta/params.sh": "Y=2\n",
    "beta/evaluate.sh": 'Y=$(cat "$AUTORESEARCH_OUT/model")\necho "accuracy: $(( 100 - (Y - 7) * (Y - 7) ))"\n',
}
SHORT = ("--agent", "queue", "--max-experiments", "1", "--budget", "1", "--timeout", "30", "--slots", "1",
         "--baseline-runs", "1", "--confirm", "never")


def test_two_targets_one_after_the_other_then_side_by_side(tmp_path: Path) -> None:
    repo, env = new_repo(tmp_path, TWO_TARGETS)
    qa, qb = tmp_path / "qa", tmp_path / "qb"
    queue_diff(qa, "1", repo, "alpha/params.sh", "X=6", "X=4", "x to 4")
    queue_diff(qb, "1", repo, "beta/params.sh", "Y=2", "Y=5", "y to 5")
    for tag, toml, queue in (("a1", "alpha.toml", qa), ("b1", "beta.toml", qb)):
        done = run_cli(repo, "start", "--tag", tag, "--target", toml, "--queue", str(queue), *SHORT, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
    alpha, beta = rows(repo, "results-alpha.tsv", "loss"), rows(repo, "results-beta.tsv", "accuracy")
    assert [(r[1], r[3]) for r in alpha] == [("9.000000", "keep"), ("1.000000", "keep")]
    # higher is better, and the file shows the accuracy as measured
    assert [(r[1], r[3]) for r in beta] == [("75.000000", "keep"), ("96.000000", "keep")]
    assert not (repo / "results.tsv").exists()
    queue_diff(qa, "r", repo, "alpha/params.sh", "X=4", "X=3", "x to 3", rev="autoresearch/a1")
    resumed = run_cli(repo, "resume", "--tag", "a1", "--max-experiments", "2", env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [(r[1], r[3]) for r in rows(repo, "results-alpha.tsv", "loss")][-1] == ("0.000000", "keep")
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"

    # side by side: alpha waits on its empty queue while beta runs whole; a second alpha is refused
    first = start_background(repo, "start", "--tag", "a2", "--target", "alpha.toml", "--queue", str(qa), *SHORT,
                             env=env)
    try:
        wait_for(lambda: decided(repo, "a2") == 1)
        refused = run_cli(repo, "start", "--tag", "a3", "--target", "alpha.toml", "--queue", str(qa), *SHORT, env=env)
        assert refused.returncode == 4 and "target alpha" in refused.stderr
        assert "running (tag a2" in run_cli(repo, "status", "--tag", "a2", env=env).stdout
        queue_diff(qb, "2", repo, "beta/params.sh", "Y=2", "Y=9", "y to 9")
        done = run_cli(repo, "start", "--tag", "b2", "--target", "beta.toml", "--queue", str(qb), *SHORT, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert first.poll() is None  # alpha still ran all the while
        queue_diff(qa, "2", repo, "alpha/params.sh", "X=6", "X=2", "x to 2")
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            first.kill()
    alpha = rows(repo, "results-alpha.tsv", "loss")
    assert [(r[1], r[3]) for r in alpha] == [("9.000000", "keep"), ("1.000000", "keep")]
    assert [(r[1], r[3]) for r in rows(repo, "results-beta.tsv", "accuracy")] == [("75.000000", "keep"),
                                                                                  ("96.000000", "keep")]
    assert git(repo, "show", "autoresearch/a2:alpha/params.sh") == "X=2"
    assert git(repo, "show", "autoresearch/b2:beta/params.sh") == "Y=9"
    report = run_cli(repo, "report", "--tag", "a2", "--compare", "b2", "a1", "--out", str(tmp_path / "report"), env=env)
    assert report.returncode == 0, report.stdout + report.stderr


def test_a_plain_stop_stops_the_daemon_of_the_root_declaration(tmp_path: Path) -> None:
    """With autoresearch.toml at the root, `autoresearch stop` (no --target) finds its daemon."""
    files = {k: v for k, v in TWO_TARGETS.items() if k.startswith("alpha")}
    files["autoresearch.toml"] = files.pop("alpha.toml")
    repo, env = new_repo(tmp_path, files)
    (tmp_path / "empty").mkdir()
    daemon = start_background(repo, "start", "--tag", "s1", "--queue", str(tmp_path / "empty"), *SHORT, env=env)
    try:
        wait_for(lambda: decided(repo, "s1") == 1)  # the baseline; then it waits on its empty queue
        stopped = run_cli(repo, "stop", env=env)
        assert stopped.returncode == 0 and "stop requested" in stopped.stdout, stopped.stdout + stopped.stderr
        assert daemon.wait(timeout=120) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()


def decided(repo: Path, tag: str) -> int:
    try:
        return len(folded(journal_events(repo, tag)).decided)
    except OSError:
        return 0


def wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# --- agents on a declared target -----------------------------------------------------------------------
def test_the_llm_agent_edits_the_targets_files_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fake_anthropic import FakeAnthropic, message, scripted, tool

    from loop.agents.anthropic_agent import AnthropicAgent
    from loop.agents.base import Context

    files = {"src/model.rs": "const WIDTH: usize = 8;\n", "src/train.rs": "const LR: f64 = 0.1;\n",
             "src/data.rs": "const NOISE: f64 = 0.1;\n"}
    repo, _ = new_repo(tmp_path, files)
    editable = {p: files[p] for p in ("src/model.rs", "src/train.rs")}
    context = Context(repo=repo, program="Lower val_mse.", train_py="", history=(), best_val_bpb=None,
                      notes_path=tmp_path / "notes.md", run_dir=tmp_path / "exp", editable=editable, metric="val_mse")
    edit = "str_replace_based_edit_tool"
    replies = [message([tool(edit, command="view", path="src/model.rs")]),
               message([tool(edit, command="str_replace", path="src/data.rs", old_str="0.1", new_str="0.0")]),
               message([tool(edit, command="str_replace", path="src/train.rs", old_str="0.1", new_str="0.05")]),
               message([tool("submit_experiment", description="halve LR", hypothesis="0.1 overshoots")])]
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    with FakeAnthropic(scripted(replies)) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        proposal = AnthropicAgent(max_turns=6).propose(context)
    assert proposal.files == {"src/train.rs": "const LR: f64 = 0.05;\n"} and proposal.description == "halve LR"
    first = server.requests[0]["body"]["messages"][0]["content"]
    assert "## Current src/model.rs" in first[1]["text"] and "## Current src/train.rs" in first[1]["text"]
    assert "best val_mse so far" in first[0]["text"]
    refused = server.requests[2]["body"]["messages"][-1]["content"][0]
    assert refused["is_error"] and "src/data.rs is read-only" in refused["content"]


def test_a_higher_is_better_metric_reads_as_itself_in_every_view(tmp_path: Path) -> None:
    """The controller orders scores lower-is-better, so an accuracy is negated inside; the live lines,
    status, show and the report name the metric and show it as measured, changes in its own direction."""
    repo, env = new_repo(tmp_path, TWO_TARGETS)
    queue_diff(tmp_path / "qb", "1", repo, "beta/params.sh", "Y=2", "Y=5", "y to 5")
    done = run_cli(repo, "start", "--tag", "b1", "--target", "beta.toml", "--queue", str(tmp_path / "qb"), *SHORT,
                   env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"#0001 keep +96\.000000 \+21\.000000 ", done.stdout), done.stdout
    status = run_cli(repo, "status", "--tag", "b1", env=env).stdout
    assert "baseline accuracy: 75.000000" in status and "best accuracy: 96.000000" in status, status
    shown = run_cli(repo, "show", "1", "--tag", "b1", env=env).stdout
    assert "accuracy: 96.000000; best before: 75.000000 (+21.000000)" in shown, shown
    report = run_cli(repo, "report", "--tag", "b1", "--out", str(tmp_path / "report"), env=env)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "baseline accuracy: 75.000000; best: 96.000000" in report.stdout, report.stdout
    assert "val_bpb" not in status + shown + report.stdout


# --- check and run on a declared target ----------------------------------------------------------------
def test_check_judges_a_commit_by_the_declared_target(tmp_path: Path) -> None:
    """`check` guards a commit as the daemon does for the target at the root: its editable files, not train.py."""
    repo, env = new_repo(tmp_path, example_files())
    root = run_cli(repo, "check", env=env)
    assert root.returncode == 0 and root.stdout.startswith("clean: HEAD ("), root.stdout + root.stderr
    assert "root commit" in root.stdout and "target linreg (autoresearch.toml)" in root.stdout
    assert "train.py" not in root.stdout
    base = git(repo, "rev-parse", "HEAD")
    main_rs, data_rs = (repo / "src/main.rs").read_text(), (repo / "src/data.rs").read_text()
    faster = commit_change(repo, "src/main.rs", main_rs.replace("f64 = 0.001", "f64 = 0.01"))
    clean = run_cli(repo, "check", env=env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout == (f"clean: HEAD ({faster[:7]}) against its parent ({base[:7]}), by the guard of target "
                            "linreg (autoresearch.toml): changes only src/main.rs\n")
    cheat = commit_change(repo, "src/data.rs", data_rs.replace("const NOISE: f64 = 0.1;", "const NOISE: f64 = 0.0;"))
    refused = run_cli(repo, "check", env=env)
    lines = refused.stdout.splitlines()
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert lines[0].startswith(f"refused: HEAD ({cheat[:7]}) against its parent ({faster[:7]}), by the guard of "
                               "target linreg"), lines
    assert "src/data.rs changed: only src/main.rs may change" in lines
    assert run_cli(repo, "check", faster[:10], env=env).returncode == 0


def test_check_of_a_runs_branch_guards_it_as_its_daemon_did(tmp_path: Path) -> None:
    """The commit a daemon kept for `--target alpha.toml` is clean to `check autoresearch/TAG`, with no
    autoresearch.toml at the root: the run's journal names the target it was started with."""
    repo, env = new_repo(tmp_path, TWO_TARGETS)
    queue_diff(tmp_path / "qa", "1", repo, "alpha/params.sh", "X=6", "X=4", "x to 4")
    done = run_cli(repo, "start", "--tag", "a1", "--target", "alpha.toml", "--queue", str(tmp_path / "qa"), *SHORT,
                   env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [r[3] for r in rows(repo, "results-alpha.tsv", "loss")] == ["keep", "keep"]
    kept = run_cli(repo, "check", "autoresearch/a1", env=env)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert kept.stdout.startswith("clean: autoresearch/a1 (") and "target alpha (alpha.toml)" in kept.stdout
    assert "changes only alpha/params.sh" in kept.stdout


ALPHA_AT_ROOT = {"autoresearch.toml": ALPHA, **{k: v for k, v in TWO_TARGETS.items() if k.startswith("alpha/")}}


def test_run_runs_the_declared_target_once_from_the_working_tree(tmp_path: Path) -> None:
    repo, env = new_repo(tmp_path, ALPHA_AT_ROOT)
    head = git(repo, "rev-parse", "HEAD")
    done = run_cli(repo, "run", "--budget", "1", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("loss: 9.000000 (logs in "), done.stdout
    (repo / "alpha/params.sh").write_text("X=4\n")  # not committed: the run takes the working tree as it is
    edited = run_cli(repo, "run", "--budget", "1", env=env)
    assert edited.returncode == 0 and "loss: 1.000000 (logs in " in edited.stdout, edited.stdout + edited.stderr
    (repo / "alpha/params.sh").write_text("exit 3\n")  # the run fails: said in one line, exit 1
    broken = run_cli(repo, "run", "--budget", "1", env=env)
    assert broken.returncode == 1 and "crash: run: exit 3" in broken.stdout, broken.stdout + broken.stderr
    # no branch, commit, index entry or results row; only the edit, which is the person's
    assert git(repo, "rev-parse", "HEAD") == head and git(repo, "branch", "--list") == "* main"
    assert git(repo, "status", "--porcelain") == "M alpha/params.sh" and git(repo, "diff", "--cached") == ""
    assert not (repo / "results-alpha.tsv").exists()


@pytest.mark.skipif(shutil.which("cargo") is None, reason="needs cargo (the Rust toolchain)")
def test_the_rust_example_runs_once_and_ignores_what_autoresearch_writes(tmp_path: Path) -> None:
    """examples/linreg-rust copied as it is, its .gitignore included: `run` works, and what runs leave behind
    (the state folder, the results file) never shows as a change to commit."""
    repo, env = new_repo(tmp_path, example_files(), ignored=(EXAMPLE / ".gitignore").read_text())
    done = run_cli(repo, "run", "--budget", "1", env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^val_mse: \d+\.\d{6} \(logs in ", done.stdout, re.M), done.stdout
    results = targets.find(repo, None).results
    (repo / results).write_text("commit\tval_mse\tmemory_gb\tstatus\tdescription\n")  # as the daemon writes it
    assert (repo / ".autoresearch").is_dir() and git(repo, "status", "--porcelain", "--untracked-files=all") == ""
