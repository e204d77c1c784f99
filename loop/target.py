"""What is optimised: the one record that names the editable and protected files, the commands,
the metric and its direction.

The builtin experiment (train.py, prepare.py, val.txt, val_bpb) is `BUILTIN`, the target when the
repository has no `autoresearch.toml` and no `--target FILE` is given; its runs keep their own,
stronger runner (loop/runner.py: the harness computes the metric in separate processes). Any other
target is declared in a TOML file:

    name = "linreg"                      # tag of this target's lock and live state (default: file stem)
    editable = ["src/main.rs"]           # globs of the files an agent may change (required)
    protected = ["src/data.rs"]          # globs hashed at start; a change refuses the experiment
    program = "program.md"               # the human's brief to the agent
    results = "results.tsv"              # this target's results file
    [[frozen]]                           # lines of an editable file that must not change, from the
    path = "src/main.rs"                 # line holding `begin` to the line holding `end`
    begin = "// frozen: eval"
    end = "// end frozen"
    [commands]
    prepare = "..."                      # once, before the first run (optional)
    check = "..."                        # before start: exit 0 or one line of why not (optional)
    build = "..."                        # in every run's fresh directory (optional)
    run = "..."                          # with AUTORESEARCH_TIME_BUDGET set (required)
    evaluate = "..."                     # scores what run left in $AUTORESEARCH_OUT (optional)
    [metric]
    name = "val_mse"                     # the `name: value` line, the last one wins (required)
    better = "lower"                     # lower | higher
    memory = "peak_mem_mb"               # a `key: value` line of megabytes (optional)
    chance = 1.0                         # what a model that learned nothing scores (optional)
    [run]
    timeout = 600                        # hard wall-clock limit on build + run, seconds (optional)
    [sandbox]
    readonly = ["~/.cargo"]              # what the run may read besides its own directory
    cache = { dir = "target", env = "CARGO_TARGET_DIR" }   # kept between runs, writable

The metric's direction: the controller orders scores lower-is-better everywhere (policy, noise,
best, --min-delta), so a higher-is-better metric is negated once, in the target runner
(`Target.score`), and un-negated for the results file (`Target.shown`); nothing else changes.

What a custom target's result rests on: the guard (only editable files change, frozen regions and
protected files are byte-identical to the start), the sandbox (every run starts in a fresh
directory made from the commit's files, sees only what `[sandbox]` lists, has no network and is
killed with its whole process tree at the timeout), and, where one is given, the evaluate command,
which runs in a directory the run cannot write to and whose metric line is the only one read. A
target with no evaluate command trusts the run's own last metric line: an agent that edits the
code printing it can print anything, so declare that code protected or give an evaluate command.
"""
from __future__ import annotations

import fnmatch
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loop.errors import UsageError
from loop.journal import ExperimentRecord, RunRecord, results_rows, state_dir

TARGET_FILE = "autoresearch.toml"
BETTER = ("lower", "higher")
KNOWN_KEYS = {"": {"name", "editable", "protected", "program", "results", "frozen", "commands", "metric", "run",
                   "sandbox"},
              "commands": {"prepare", "check", "build", "run", "evaluate"},
              "metric": {"name", "better", "memory", "chance"}, "run": {"timeout"}, "sandbox": {"readonly", "cache"}}


@dataclass(frozen=True)
class Region:
    """Lines of an editable file, from the one holding `begin` to the one holding `end`, that stay as they are."""

    path: str
    begin: str
    end: str

    def text(self, content: str) -> str | None:
        """The region's text in content; None when its markers are missing."""
        lines = content.splitlines(keepends=True)
        start = next((i for i, line in enumerate(lines) if self.begin in line), None)
        if start is None:
            return None
        stop = next((i for i in range(start, len(lines)) if self.end in lines[i]), None)
        return None if stop is None else "".join(lines[start:stop + 1])


@dataclass(frozen=True)
class MetricView:
    """A run's scores as a person reads them: the metric's name and its own sign. The controller
    stores every score lower-is-better, so a higher-is-better metric is negated until shown."""

    name: str = "val_bpb"
    higher_is_better: bool = False
    chance: float | None = 8.0  # what a model that learned nothing scores (the builtin: a uniform byte)

    def shown(self, score: float) -> float:
        return -score if self.higher_is_better else score

    def text(self, score: float | None) -> str:
        return "-" if score is None else f"{self.shown(score):.6f}"

    def change(self, score: float, before: float) -> str:
        """The change from `before` to `score`, in the metric's own direction."""
        return f"{(before - score if self.higher_is_better else score - before):+.6f}"

    def learned_nothing(self, score: float) -> bool:
        """Whether a controller score is within 1% of chance: what the untouched code scores when the
        budget fits no real training (a busy machine, a budget too short)."""
        if self.chance is None:
            return False
        return score >= self.shown(self.chance) - 0.01 * abs(self.chance)

    @property
    def plotted(self) -> str:
        """What a plot of controller scores shows: the metric, negated when higher is better."""
        return f"-{self.name}" if self.higher_is_better else self.name


def baseline_learned_nothing(view: MetricView, baseline: ExperimentRecord | None) -> bool:
    """Whether a run's kept baseline scored what a model that learned nothing scores."""
    return bool(baseline and baseline.status == "keep" and baseline.val_bpb is not None
                and view.learned_nothing(baseline.val_bpb))


def learned_nothing_warning(view: MetricView, score: float | None, summary: dict[str, Any], budget: float) -> str:
    """The baseline scored what a model that learned nothing scores: every result is then measured
    against chance, on a machine too busy or with a budget too short to train."""
    steps = summary.get("num_steps")
    ran = f" ({steps:g} steps)" if isinstance(steps, (int, float)) else ""
    return (f"warning: the baseline scored {view.text(score)}, what a model that learned nothing scores: "
            f"{budget:g}s{ran} were too few to train on this machine; results mean little until it "
            f"learns (`autoresearch stop`, then start a new tag with a longer --budget)")


def metric_of(meta: dict[str, Any]) -> MetricView:
    """The metric of a run, from its journal's run_started fields (a custom target records it)."""
    declared = meta.get("target") or {}
    if not declared:
        return MetricView()
    chance = declared.get("chance")
    return MetricView(declared.get("metric", "val_bpb"), declared.get("better") == "higher",
                      float(chance) if isinstance(chance, (int, float)) and not isinstance(chance, bool) else None)


@dataclass(frozen=True)
class Target:
    name: str
    editable: tuple[str, ...]  # globs, relative to the repository root
    protected: tuple[str, ...] = ()  # globs
    program: str = "program.md"
    results: str = "results.tsv"
    metric: str = "val_bpb"
    higher_is_better: bool = False
    memory: str = "peak_vram_mb"
    chance: float | None = None  # what a model that learned nothing scores, where known
    prepare: str | None = None
    check: str | None = None
    build: str | None = None
    run: str | None = None
    evaluate: str | None = None
    timeout: float | None = None  # None: the run's --timeout
    readonly: tuple[str, ...] = ()
    cache_dir: str | None = None
    cache_env: str | None = None
    frozen: tuple[Region, ...] = ()
    source: Path | None = None  # the TOML file; None for the builtin experiment

    @property
    def builtin(self) -> bool:
        return self.source is None

    def is_editable(self, path: str) -> bool:
        return _matches(path, self.editable) and not self.is_protected(path)

    def is_protected(self, path: str) -> bool:
        return _matches(path, self.protected)

    def editable_files(self, tracked: list[str]) -> list[str]:
        """The tracked files an agent may edit, in a stable order."""
        return sorted(p for p in tracked if self.is_editable(p))

    def score(self, value: float) -> float:
        """The controller's ordering is lower-is-better; a higher-is-better metric is negated for it."""
        return self.view.shown(value)  # negating is its own inverse

    def shown(self, score: float | None) -> float | None:
        """The metric's real value from a controller score (the inverse of `score`)."""
        return None if score is None else self.view.shown(score)

    @property
    def view(self) -> MetricView:
        return MetricView(self.metric, self.higher_is_better, self.chance)


# The builtin experiment in the same format. Its runs do not go through these commands: runner.py
# trains and evaluates it from pinned harness files in separate sandboxes, and guard.py lints
# train.py and looks for the validation text in it; the record names what the rest must know.
BUILTIN_TOML = """
name = "builtin"
editable = ["train.py"]
protected = ["prepare.py", "val.txt", "holdout.txt", "program.md", "pyproject.toml", ".gitignore", "loop/*",
             "scripts/*"]
program = "program.md"
results = "results.tsv"
[commands]
check = "python prepare.py check"
run = "python train.py"
evaluate = "python prepare.py eval --take-val --checkpoint $AUTORESEARCH_OUT"
[metric]
name = "val_bpb"
better = "lower"
memory = "peak_vram_mb"
chance = 8.0
"""


def find(repo: Path, given: Path | None) -> Target:
    """The target of a run: --target FILE, else autoresearch.toml at the root, else the builtin experiment."""
    if given is not None:
        path = given if given.is_absolute() else repo / given
        if not path.is_file():
            raise UsageError(f"--target {given}: no such file; give the path of a target's TOML file")
        return load(path, repo)
    default = repo / TARGET_FILE
    return load(default, repo) if default.is_file() else BUILTIN


def load(path: Path, repo: Path) -> Target:
    """A target from its TOML file, or a UsageError naming the field and the fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path.name}: not UTF-8 text: save it as UTF-8") from None
    own = str(path.resolve().relative_to(repo.resolve())) if path.resolve().is_relative_to(repo.resolve()) else ""
    return parse(text, path.name, own, path)


def parse(text: str, where: str, own: str = "", source: Path | None = None) -> Target:
    """A target from TOML text; `own` is the file's path in the repository (protected with the rest)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{where}: not valid TOML ({e}): fix the syntax") from None
    _no_unknown(data, where)
    commands, metric = _table(data, "commands", where), _table(data, "metric", where)
    run, box = _table(data, "run", where), _table(data, "sandbox", where)
    editable = _globs(data, "editable", where, required=True)
    program = _text(data, "program", where) or "program.md"
    protected = tuple(dict.fromkeys((*_globs(data, "protected", where), *([own] if own else []), program)))
    better = _text(metric, "better", where, "metric.") or "lower"
    if better not in BETTER:
        raise UsageError(f"{where}: metric.better = {better!r}: write \"lower\" or \"higher\"")
    if not _text(commands, "run", where, "commands."):
        raise UsageError(f"{where}: commands.run is missing: give the command that trains and prints the metric")
    if not _text(metric, "name", where, "metric."):
        raise UsageError(f"{where}: metric.name is missing: give the key of the `key: value` line that scores a run")
    target = Target(
        name=_text(data, "name", where) or Path(where).stem, editable=editable, protected=protected, program=program,
        results=_text(data, "results", where) or "results.tsv", metric=metric["name"],
        higher_is_better=better == "higher", memory=_text(metric, "memory", where, "metric.") or "",
        chance=_chance(metric, where),
        prepare=_text(commands, "prepare", where, "commands."), check=_text(commands, "check", where, "commands."),
        build=_text(commands, "build", where, "commands."), run=commands["run"],
        evaluate=_text(commands, "evaluate", where, "commands."), timeout=_timeout(run, where),
        readonly=_globs(box, "readonly", where, prefix="sandbox."), frozen=_regions(data, where), source=source,
        **_cache(box, where))
    _consistent(target, where)
    return target


def _consistent(target: Target, where: str) -> None:
    both = [g for g in target.editable if _matches(g, target.protected)]
    if both:
        raise UsageError(f"{where}: {both[0]} is both editable and protected: remove it from one of the two lists")
    if target.results in target.editable or target.results in target.protected:
        raise UsageError(f"{where}: results = {target.results!r} is one of the target's files: name another file")
    for region in target.frozen:
        if not _matches(region.path, target.editable):
            raise UsageError(f"{where}: frozen region in {region.path}, which is not editable: "
                             "list the file under editable, or drop the region (protect the whole file instead)")
    if target.name and not all(c.isalnum() or c in "-_." for c in target.name):
        raise UsageError(f"{where}: name = {target.name!r}: use letters, digits, '-', '_' and '.' only")


def _matches(path: str, globs: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(path, g) for g in globs)


def _no_unknown(data: dict[str, Any], where: str) -> None:
    for table, keys in KNOWN_KEYS.items():
        section = data if not table else data.get(table, {})
        if not isinstance(section, dict):
            continue
        for key in section:
            if key not in keys:
                name = f"{table}.{key}" if table else key
                raise UsageError(f"{where}: unknown field {name}: the fields are {', '.join(sorted(keys))}")


def _table(data: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise UsageError(f"{where}: {name} must be a table: write [{name}] on a line of its own")
    return value


def _text(data: dict[str, Any], key: str, where: str, prefix: str = "") -> str | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise UsageError(f"{where}: {prefix}{key} must be a non-empty string: quote it")
    return value


def _globs(data: dict[str, Any], key: str, where: str, required: bool = False, prefix: str = "") -> tuple[str, ...]:
    value = data.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise UsageError(f"{where}: {prefix}{key} must be a list of paths or globs, e.g. [\"src/*.rs\"]")
    if required and not value:
        raise UsageError(f"{where}: {prefix}{key} is missing: list the files an agent may change, e.g. [\"src/*.rs\"]")
    if any(v.startswith("/") or ".." in Path(v).parts for v in value) and not prefix:
        raise UsageError(f"{where}: {key} holds a path outside the repository: give paths relative to its root")
    return tuple(value)


def _chance(metric: dict[str, Any], where: str) -> float | None:
    value = metric.get("chance")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{where}: metric.chance = {value!r}: give the number a model that learned nothing scores")
    return float(value)


def _timeout(run: dict[str, Any], where: str) -> float | None:
    value = run.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UsageError(f"{where}: run.timeout = {value!r}: give a positive number of seconds")
    return float(value)


def _regions(data: dict[str, Any], where: str) -> tuple[Region, ...]:
    regions = data.get("frozen", [])
    if not isinstance(regions, list) or not all(isinstance(r, dict) for r in regions):
        raise UsageError(f"{where}: frozen must be an array of tables: write [[frozen]] with path, begin and end")
    found = []
    for r in regions:
        missing = [k for k in ("path", "begin", "end") if not isinstance(r.get(k), str) or not r[k]]
        if missing:
            raise UsageError(f"{where}: a [[frozen]] region has no {missing[0]}: give path, begin and end")
        found.append(Region(r["path"], r["begin"], r["end"]))
    return tuple(found)


def _cache(box: dict[str, Any], where: str) -> dict[str, Any]:
    cache = box.get("cache")
    if cache is None:
        return {}
    if not isinstance(cache, dict) or not isinstance(cache.get("dir"), str) or not isinstance(cache.get("env"), str):
        raise UsageError(f"{where}: sandbox.cache needs dir and env, e.g. {{ dir = \"target\", env = "
                         "\"CARGO_TARGET_DIR\" }")
    return {"cache_dir": cache["dir"], "cache_env": cache["env"]}


def describe(target: Target) -> dict[str, Any]:
    """The target as the journal records it at start."""
    return {"name": target.name, "source": str(target.source) if target.source else None, "metric": target.metric,
            "better": "higher" if target.higher_is_better else "lower", "editable": list(target.editable),
            "chance": target.chance}




def of_config(repo: Path, config_target: str | None) -> Target:
    """The target a run's Config names (its `target` field), as `find` resolves it."""
    return find(repo, Path(config_target) if config_target else None)


def lock_file(repo: Path, target: Target) -> Path:
    """One daemon per target: the builtin's lock is the repository's, a custom target's its own,
    so two targets of one repository run side by side."""
    return state_dir(repo) / ("daemon.lock" if target.builtin else f"daemon-{target.name}.lock")


def state_file(repo: Path, target: Target) -> Path:
    """The live view `status` reads, one per target for the same reason."""
    return state_dir(repo) / ("state.json" if target.builtin else f"state-{target.name}.json")


def results_text(target: Target, run: RunRecord) -> str:
    """A custom target's results file: the builtin's columns, the metric under its own name and as
    measured (a higher-is-better metric un-negated)."""
    rows = [f"commit\t{target.metric}\tmemory_gb\tstatus\tdescription\n"]
    for line in results_rows(run):
        commit, value, rest = line.split("\t", 2)
        shown = target.shown(float(value)) if not rest.split("\t")[1].startswith("crash") else 0.0
        rows.append(f"{commit}\t{shown:.6f}\t{rest}")
    return "".join(rows)


BUILTIN = parse(BUILTIN_TOML, "the builtin target")
