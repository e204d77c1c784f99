"""Attacks only the real evaluator can catch, through the real daemon with the real harness: a
model that peeks at the next byte, NaN logits and a wrong output shape, each switched on only in
evaluation (so training succeeds and the evaluator is what stops it). Training is skipped (the
untrained model is saved at once) to keep the test short. Plus forged metric lines printed by
train.py's import before it exits with success: they stay in the model process."""
from __future__ import annotations

from pathlib import Path

from daemon_kit import assert_invariants, git, journal_events, make_repo, queue_proposal, read_results, run_cli
from loop.journal import fold

# Appended to the real train.py: the model's forward misbehaves only in eval mode.
PATCH = '''

_honest_forward = GPT.forward


def _forward(self, idx: torch.Tensor) -> torch.Tensor:
    logits = _honest_forward(self, idx)
    if self.training:
        return logits
{body}


GPT.forward = _forward
'''
# Saves the untrained model at once: the evaluator is under test here, not training speed.
QUICK_MAIN = '''
if __name__ == "__main__":
    _out = Path(os.environ.get("AUTORESEARCH_OUT", "out"))
    _out.mkdir(parents=True, exist_ok=True)
    torch.save(build_model().state_dict(), _out / "model.pt")
    print("---")
    for _key in ("training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent", "total_tokens_M",
                 "num_steps", "num_params_M", "depth"):
        print(f"{_key}: 0.1")
'''
ATTACKS = {
    # The next byte's logit boosted: val_bpb near 0 if the evaluator did not probe causality.
    "peeks_at_next_byte": ("    return logits + 30.0 * torch.nn.functional.one_hot(torch.roll(idx, -1, 1), 256).float()",
                           "eval: model is not causal"),
    "nan_logits": ("    return logits * float('nan')", "eval: model produced NaN or infinite logits"),
    "wrong_shape": ("    return logits[:, :-1]", "eval: model output has shape"),
}


def test_evaluator_attacks_through_the_daemon(tmp_path: Path, prepared_cache: Path) -> None:
    repo, env = make_repo(tmp_path, harness="real")
    env["AUTORESEARCH_CACHE"] = str(prepared_cache)
    before = {p: (repo / p).read_bytes() for p in ("prepare.py", "val.txt", "program.md")}
    base = (repo / "train.py").read_text()
    head, sep, _ = base.partition('\nif __name__ == "__main__":')
    assert sep, "train.py keeps its training under __main__"
    (repo / "train.py").write_text(head + QUICK_MAIN)
    git(repo, "commit", "-qam", "untrained baseline")
    queue = tmp_path / "queue"
    for i, (name, (body, _)) in enumerate(ATTACKS.items()):
        queue_proposal(queue, f"{i}", head + PATCH.format(body=body) + QUICK_MAIN, name)
    done = run_cli(repo, "start", "--tag", "r", "--agent", "queue", "--queue", str(queue), "--budget", "2",
                   "--fix-attempts", "0", "--max-experiments", str(len(ATTACKS)), env=env, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    by_name = {e.description: e for e in fold(journal_events(repo, "r")).experiments}
    assert set(ATTACKS) <= set(by_name), (done.stdout[-2000:], [(e.description, e.reason) for e in by_name.values()])
    for name, (_, reason) in ATTACKS.items():
        assert by_name[name].status == "crash" and by_name[name].reason.startswith(reason), (name, by_name[name].reason)
    assert {p: (repo / p).read_bytes() for p in before} == before
    assert len(read_results(repo)) == len(ATTACKS) + 1
    assert_invariants(repo, "r")


def test_forged_metric_lines_from_inside_the_evaluator(tmp_path: Path, prepared_cache: Path) -> None:
    """train.py's import prints forged lines and exits 0: in the real evaluator that happens in the
    model process, whose output never reaches the daemon, so the experiment is a crash."""
    repo, env = make_repo(tmp_path, harness="real")
    env["AUTORESEARCH_CACHE"] = str(prepared_cache)
    base = (repo / "train.py").read_text()
    # String splicing by join and os reached through shutil by an assignment: past the lint on purpose.
    code = ("import shutil\n_sh = shutil\nif __name__ != '__main__':\n    print(''.join(['val', '_b', 'pb: 0.000001']))\n"
            "    print(''.join(['eval', '_seconds: 0.0']), flush=True)\n    _sh.os._exit(0)")
    queue_proposal(tmp_path / "q", "a", base.replace("\nif __name__", "\n" + code + "\n\nif __name__", 1), "forged")
    done = run_cli(repo, "start", "--tag", "t", "--agent", "queue", "--queue", str(tmp_path / "q"), "--budget", "1",
                   "--max-experiments", "1", env=env)
    assert done.returncode == 0, done.stderr
    forged = {e.description: e for e in fold(journal_events(repo, "t")).experiments}["forged"]
    assert forged.status == "crash", (forged.status, forged.val_bpb)
