"""The read-only harness: constants, data preparation, the training-data loader, and the trusted
evaluator. The agent never edits this file; the daemon pins its bytes at the start of a run.

    python prepare.py                       prepare the training data (offline, idempotent)
    python prepare.py --source PATH|NAME    prepare from your own text or a downloadable corpus
    python prepare.py check                 is the data prepared and val.txt intact? (exit 0/1)
    python prepare.py eval --checkpoint DIR score a trained model on val.txt (prints val_bpb)
    python prepare.py eval --checkpoint DIR --split holdout     ... on holdout.txt (holdout_bpb)
    python prepare.py new-splits            maintainers: new val.txt and holdout.txt, seeds discarded

Tokenization is raw UTF-8 bytes (vocabulary 256), so val_bpb is bits per byte with no tokenizer to
game. Training data lives in the cache (AUTORESEARCH_CACHE, default ~/.cache/autoresearch); the
validation split is val.txt next to this file, committed and pinned by SHA-256, and holdout.txt a
second split for confirming results; both come from generator seeds that were thrown away, so
neither can be regenerated from this file. Preparing from
another source writes a new val.txt only with --force-val, and records its checksum beside the
data (val.sha256 in the cache): earlier results are then incomparable, and `check` says so.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request
from bisect import bisect_right
from itertools import accumulate
from pathlib import Path

# --- constants --------------------------------------------------------------------------------
TIME_BUDGET = float(os.environ.get("AUTORESEARCH_TIME_BUDGET", "300"))  # training seconds
MAX_SEQ_LEN = 1024  # context length the evaluator scores with; models must accept it
VOCAB_SIZE = 256  # raw bytes
# The builtin splits: generated from random seeds that were thrown away (`python prepare.py
# new-splits`), so nobody can regenerate them; pinned by checksum. The floor of each is the
# generator's charged bits per byte, computed when it was made.
VAL_SHA256 = "ed16e3e4e0778f8b57b635cfa2da7ad2cef394eddaae01345d5533fcfda90233"  # val.txt
VAL_FLOOR = 0.997866  # bits/byte of information in val.txt
HOLDOUT_SHA256 = "c9cd27a2a238487a2afc763113df435d1a85aa40bc0590ca909be238e990b400"  # holdout.txt
HOLDOUT_FLOOR = 0.999532  # bits/byte of information in holdout.txt
SPLITS = {"val": ("val.txt", VAL_SHA256, VAL_FLOOR), "holdout": ("holdout.txt", HOLDOUT_SHA256, HOLDOUT_FLOOR)}
VAL_BYTES = 256 * 1024  # size of each builtin split (rounded up to whole documents)
BUILTIN_MB = float(os.environ.get("AUTORESEARCH_BUILTIN_MB", "100"))  # size of the training split
TRAIN_SEED = 1  # public: anyone can rebuild the training split; the splits' seeds are gone
HERE = Path(__file__).resolve().parent
DOWNLOADS = {  # --source NAME: shards fetched over HTTP (AUTORESEARCH_DATA_URL overrides the base)
    "climbmix": ("https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main", ["shard_00000.parquet"]),
    "fineweb-edu": ("https://huggingface.co/datasets/HuggingFaceFW/fineweb-edu/resolve/main/sample/10BT", ["000_00000.parquet"]),
    "tinystories": ("https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main", ["TinyStoriesV2-GPT4-valid.txt"]),
}


class HarnessError(Exception):
    """A reason, printed as one line with a non-zero exit."""


def data_dir() -> Path:
    return Path(os.environ.get("AUTORESEARCH_CACHE", Path.home() / ".cache" / "autoresearch")).expanduser()


def val_path() -> Path:
    return Path(os.environ.get("AUTORESEARCH_VAL", HERE / "val.txt"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the builtin corpus -----------------------------------------------------------------------
# A procedural generator with its own integer PRNG (splitmix64), so the bytes are identical on
# every machine and Python version. Every random choice is logged with its probability, so the
# corpus knows its own entropy: the floor no model can beat in expectation.

MASK = (1 << 64) - 1


class Rng:
    def __init__(self, seed: int) -> None:
        self.state = seed & MASK
        self.bits = 0.0  # information content of the text produced so far

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        self.bits += math.log2(n)
        return self.next() % n

    def one_in(self, n: int) -> bool:
        """True with chance 1/n, charged by the outcome's own chance (a yes costs more than a no)."""
        hit = self.next() % n == 0
        self.bits += math.log2(n) if hit else math.log2(n / (n - 1))
        return hit

    def uniform(self, items: list):
        """A uniform pick, charged by the chance of the item itself: equal items are one outcome."""
        item = items[self.next() % len(items)]
        self.bits += math.log2(len(items) / items.count(item))
        return item

    def weighted(self, items: list, cum: list[int]):
        """A choice by integer cumulative weights `cum`, charged by its probability."""
        i = bisect_right(cum, self.next() % cum[-1])
        self.bits += math.log2(cum[-1] / (cum[i] - (cum[i - 1] if i else 0)))
        return items[i]


def _lexicon(rng: Rng, n: int, syllables: list[str], seen: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < n:
        w = "".join(syllables[rng.next() % len(syllables)] for _ in range(2 + rng.next() % 2))
        if w not in seen:  # one word, one part of speech: a parse never has two readings
            seen.add(w)
            words.append(w)
    return words


class Grammar:
    """A made-up language: an invented lexicon with Zipfian frequencies, agreement, clauses.

    Every word is an even number of letters (two-letter syllables), so the plural `-i` and the
    verb's `-s` can be read off unambiguously; that keeps the charged bits equal to the text's
    information, which is what makes `entropy_floor` a floor.
    """

    def __init__(self) -> None:
        rng = Rng(0xA5A5)  # the lexicon is part of the corpus definition, the same for every split
        sy = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"] + ["th", "sh", "or", "an", "el"]
        seen: set[str] = {"an", "or", "no", "in", "on", "the", "some", "every", "near", "under", "with", "beyond", "and"}
        self.lex = {kind: _lexicon(rng, n, sy, seen) for kind, n in
                    (("nouns", 600), ("verbs", 250), ("adjs", 200), ("names", 120))}
        self.lex["names"] = [w.capitalize() for w in self.lex["names"]]
        self.weights = {k: [10**6 // (i + 2) for i in range(len(v))] for k, v in self.lex.items()}
        self.cum = {k: list(accumulate(w)) for k, w in self.weights.items()}
        self.prob = {k: {w: wt / self.cum[k][-1] for w, wt in zip(v, self.weights[k])} for k, v in self.lex.items()}
        self.preps = ["in", "on", "near", "under", "with", "beyond"]
        self.dets = ["the", "a", "every", "no", "some"]

    def word(self, rng: Rng, kind: str, topic: list[str] | None = None) -> str:
        if topic is None:
            return rng.weighted(self.lex[kind], self.cum[kind])
        # Half the time a topical word (long-range structure). Charge the word's total chance
        # under both routes, since the text cannot tell which route produced it.
        if rng.next() % 2:
            w = topic[rng.next() % len(topic)]
        else:
            w = self.lex[kind][bisect_right(self.cum[kind], rng.next() % self.cum[kind][-1])]
        rng.bits -= math.log2(0.5 * topic.count(w) / len(topic) + 0.5 * self.prob[kind][w])
        return w

    def noun_phrase(self, rng: Rng, topic: list[str]) -> tuple[str, bool]:
        plural = not rng.one_in(2)
        det = "the" if plural else self.dets[rng.below(len(self.dets))]
        adj = self.word(rng, "adjs") + " " if rng.one_in(3) else ""
        noun = self.word(rng, "nouns", topic) + ("i" if plural else "")
        return f"{det} {adj}{noun}", plural

    def clause(self, rng: Rng, topic: list[str], names: list[str]) -> str:
        if rng.one_in(4):
            subj, plural = rng.uniform(names), False
        else:
            subj, plural = self.noun_phrase(rng, topic)
        verb = self.word(rng, "verbs") + ("" if plural else "s")  # agreement with the subject
        obj, _ = self.noun_phrase(rng, topic)
        s = f"{subj} {verb} {obj}"
        if rng.one_in(3):
            pp, _ = self.noun_phrase(rng, topic)
            s += f" {self.preps[rng.below(len(self.preps))]} {pp}"
        if rng.one_in(4):
            s += " and " + self.clause(rng, topic, names)
        return s

    def sentence(self, rng: Rng, topic: list[str], names: list[str]) -> str:
        s = self.clause(rng, topic, names)
        return s[0].upper() + s[1:] + "."


def _story(g: Grammar, rng: Rng) -> str:
    # The cast and topic are chosen first and shown first: no choice stays invisible in the text.
    topic = [g.word(rng, "nouns") for _ in range(3)]
    names = [g.word(rng, "names") for _ in range(2)]
    n = 2 + rng.below(7)
    head = f"story of {' and '.join(names)} about {', '.join(topic)}:"
    return " ".join([head] + [g.sentence(rng, topic, names) for _ in range(n)])


def _digits(rng: Rng, lo: int, hi: int) -> int:
    return lo + rng.below(hi - lo + 1)


def _recall(g: Grammar, rng: Rng) -> str:
    n = 3 + rng.below(8)
    keys = [g.word(rng, "nouns") for _ in range(n)]
    vals = [_digits(rng, 0, 999) for _ in range(n)]
    table = dict(zip(keys, vals))  # a repeated key: the later value wins, and the answer knows it
    pairs = "; ".join(f"{k}={v}" for k, v in zip(keys, vals))
    asks = [rng.uniform(keys) for _ in range(1 + rng.below(3))]
    return f"recall: {pairs}. " + " ".join(f"{k}? {table[k]}." for k in asks)


def _copy(g: Grammar, rng: Rng) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    s = "".join(alphabet[rng.below(len(alphabet))] for _ in range(_digits(rng, 4, 40)))
    return f"copy: {s} | {s}"


def _brackets(g: Grammar, rng: Rng) -> str:
    pairs = {"(": ")", "[": "]", "{": "}", "<": ">"}
    before = rng.bits
    out, stack = [], []
    steps = _digits(rng, 4, 60)
    for _ in range(steps):
        if stack and rng.one_in(2):
            out.append(pairs[stack.pop()])
        else:
            c = "([{<"[rng.below(4)]
            stack.append(c)
            out.append(c)
    out += [pairs[c] for c in reversed(stack)]  # closing the rest is forced
    # The text does not show where the random steps ended and the forced closing began, so
    # charge the string's total chance over every step count that could have produced it.
    rng.bits = before - math.log2(_bracket_chance("".join(out)))
    return f"brackets {len(out) // 2}: " + "".join(out)


def _bracket_chance(text: str) -> float:
    total, prefix, depth = 0.0, 1.0, 0
    for k in range(len(text) + 1):
        if 4 <= k <= 60 and all(c in ")]}>" for c in text[k:]):
            total += prefix / 57
        if k == len(text):
            break
        opening = text[k] in "([{<"
        prefix *= (1 / 8 if opening else 1 / 2) if depth else 1 / 4
        depth += 1 if opening else -1
    return total


def _count(g: Grammar, rng: Rng) -> str:
    s = "".join("xyz"[rng.below(3)] for _ in range(_digits(rng, 3, 30)))
    c = "xyz"[rng.below(3)]
    return f"count {c} in {s}: {s.count(c)}"


def _arith(g: Grammar, rng: Rng) -> str:
    op = "+-*"[rng.below(3)]
    hi = 99 if op == "*" else 9999
    a, b = _digits(rng, 0, hi), _digits(rng, 0, hi)
    return f"calc: {a}{op}{b}={a + b if op == '+' else a - b if op == '-' else a * b}"


KINDS = [_story, _recall, _copy, _brackets, _count, _arith]
KIND_CUM = list(accumulate([3, 1, 1, 1, 1, 1]))  # stories are three times as common as each task


def generate(seed: int, nbytes: int) -> tuple[bytes, float]:
    """Documents from `seed` until `nbytes` is reached; returns the bytes and their information in bits."""
    g, rng = Grammar(), Rng(seed)
    docs, size = [], 0
    while size < nbytes:
        doc = rng.weighted(KINDS, KIND_CUM)(g, rng) + "\n"
        docs.append(doc)
        size += len(doc)
    return "".join(docs).encode(), rng.bits


# --- preparing data -----------------------------------------------------------------------------


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def progress(msg: str) -> None:
    print(msg, flush=True)


def _read_source(path: Path) -> bytes:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    chunks = []
    for f in files:
        if f.suffix in (".txt", ".md"):
            chunks.append(f.read_text(encoding="utf-8", errors="replace"))
        elif f.suffix == ".jsonl":
            for line in f.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    chunks.append(str(json.loads(line).get("text", "")))
        elif f.suffix == ".parquet":
            import pyarrow.parquet as pq

            chunks.extend(str(t) for t in pq.read_table(f, columns=["text"]).column("text").to_pylist())
    if not chunks:
        raise HarnessError(f"no text found in {path}: give a file or a folder of .txt, .md, .jsonl or .parquet")
    return "\n".join(chunks).encode("utf-8")


def download(url: str, dest: Path, expected_sha: str | None = None, tries: int = 5) -> Path:
    """Fetch url to dest, resuming a partial `.part` file with HTTP Range after a dropped connection."""
    if dest.exists():
        return dest
    part = dest.with_name(dest.name + ".part")
    for attempt in range(tries):
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                if have and resp.status != 206:  # the server ignored Range: start over
                    have = 0
                total = have + int(resp.headers.get("Content-Length", "0"))
                with open(part, "ab" if have else "wb") as f:
                    while chunk := resp.read(1 << 20):
                        f.write(chunk)
            if part.stat().st_size < total:
                raise urllib.error.URLError("connection closed early")
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            progress(f"download of {url} interrupted ({e}); retry {attempt + 1}/{tries}")
            time.sleep(min(2**attempt * 0.2, 10))
    else:
        raise HarnessError(f"could not download {url} after {tries} tries: check the network, then run again (it resumes)")
    if expected_sha and sha256(part.read_bytes()) != expected_sha:
        part.unlink()
        raise HarnessError(f"checksum mismatch for {url}: the file was deleted, run again")
    os.replace(part, dest)
    return dest


def prepare(source: str, force_val: bool) -> None:
    cache = data_dir()
    cache.mkdir(parents=True, exist_ok=True)
    manifest_path = cache / "manifest.json"
    if manifest_path.exists() and not force_val:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("source") == source and _train_ok(cache, manifest):
            progress(f"data already prepared in {cache} ({manifest['train_bytes']:,} bytes, source {source})")
            return
    t0 = time.time()
    if source == "builtin":
        progress(f"generating the builtin corpus ({BUILTIN_MB:g} MB) into {cache} ...")
        train, bits = generate(TRAIN_SEED, int(BUILTIN_MB * 1e6))
        progress(f"generated {len(train):,} bytes in {time.time() - t0:.1f}s ({bits / len(train):.3f} bits/byte)")
        val = None
    else:
        if source in DOWNLOADS:
            base, files = DOWNLOADS[source]
            base = os.environ.get("AUTORESEARCH_DATA_URL", base)
            raw = cache / "raw" / source
            raw.mkdir(parents=True, exist_ok=True)
            paths = [download(f"{base}/{name}", raw / name) for name in files]
            text = b"\n".join(_read_source(p) for p in paths)
        else:
            path = Path(source).expanduser()
            if not path.exists():
                raise HarnessError(f"--source {source}: no such file, folder or corpus name ({', '.join(['builtin', *DOWNLOADS])})")
            text = _read_source(path)
        cut = max(len(text) - VAL_BYTES, len(text) * 9 // 10)
        train, val = text[:cut], text[cut:]
    atomic_write(cache / "train.bin", train)
    if force_val:
        if val is None:
            raise HarnessError("the builtin val.txt cannot be regenerated (its seed is gone): restore it with "
                               "`git checkout -- val.txt`, or make new splits with `python prepare.py new-splits`")
        atomic_write(val_path(), val)
        atomic_write(cache / "val.sha256", sha256(val).encode())
        progress(f"wrote a new {val_path().name} ({len(val):,} bytes): results from earlier runs are not comparable")
    elif source != "builtin":
        progress("kept val.txt (the builtin split); pass --force-val to validate on your own text instead")
    manifest = {"source": source, "train_bytes": len(train), "train_sha256": sha256(train)}
    atomic_write(manifest_path, json.dumps(manifest).encode())
    check_val()
    progress(f"prepared {len(train):,} training bytes in {time.time() - t0:.1f}s; validation: {val_path()}")
    if source == "builtin" and VAL_SHA256 == sha256(val_path().read_bytes()):
        progress(f"entropy floor of val.txt: {VAL_FLOOR:.4f} bits/byte")


def _train_ok(cache: Path, manifest: dict) -> bool:
    train = cache / "train.bin"
    return train.exists() and train.stat().st_size == manifest.get("train_bytes") and sha256(train.read_bytes()) == manifest["train_sha256"]


def expected_val_sha() -> str:
    override = data_dir() / "val.sha256"
    return override.read_text().strip() if override.exists() else VAL_SHA256


def check_val() -> bytes:
    path = val_path()
    if not path.exists():
        raise HarnessError(f"{path} is missing: restore it with `git checkout -- val.txt`")
    data = path.read_bytes()
    if sha256(data) != expected_val_sha():
        raise HarnessError(f"{path} fails its checksum: restore it with `git checkout -- val.txt` (from an earlier "
                          "commit if the change was committed: `git log -- val.txt`; results depend on it)")
    return data


def check() -> None:
    cache = data_dir()
    manifest = cache / "manifest.json"
    if not manifest.exists() or not (cache / "train.bin").exists():
        raise HarnessError(f"training data is not prepared in {cache}: run `python prepare.py`")
    if (cache / "train.bin").stat().st_size != json.loads(manifest.read_text()).get("train_bytes"):
        raise HarnessError(f"training data in {cache} is incomplete: run `python prepare.py` again")
    check_val()
    if expected_val_sha() != VAL_SHA256:
        print(f"note: val.txt is not the builtin split (see {cache / 'val.sha256'}): results are not comparable to builtin runs")


def entropy_floor(split: str = "val") -> float:
    """Bits per byte of information in a builtin split: -log2 of its probability under the generator.

    Every choice the generator makes is visible in the text and charged by its exact chance (words
    that two routes can produce are charged by the sum of both), so this is the cross-entropy the
    true source itself would score: no model beats it in expectation. Recorded when the split was
    made, since its seed is gone.
    """
    return SPLITS[split][2]


def check_split(split: str) -> bytes:
    """The split's bytes, verified (val.txt may be a custom one, see check_val)."""
    if split == "val":
        return check_val()
    name, sha, _ = SPLITS[split]
    path = HERE / name
    if not path.exists() or sha256(path.read_bytes()) != sha:
        raise HarnessError(f"{path} is missing or fails its checksum: restore it with `git checkout -- {name}` "
                          f"(from an earlier commit if the change was committed: `git log -- {name}`)")
    return path.read_bytes()


def new_splits() -> None:
    """Maintainers: write new val.txt and holdout.txt from fresh random seeds that are never stored,
    and print the constants to paste at the top of this file. Earlier results become incomparable."""
    lines = []
    for name, (filename, _, _) in SPLITS.items():
        seed = int.from_bytes(os.urandom(8), "little") | 1 << 62  # never TRAIN_SEED, never kept
        data, bits = generate(seed, VAL_BYTES)
        del seed
        atomic_write(HERE / filename, data)
        lines += [f'{name.upper()}_SHA256 = "{sha256(data)}"  # {filename}',
                  f"{name.upper()}_FLOOR = {bits / len(data):.6f}  # bits/byte of information in {filename}"]
        progress(f"wrote {HERE / filename} ({len(data):,} bytes)")
    print("paste into prepare.py:\n" + "\n".join(lines))


# --- training data loader ---------------------------------------------------------------------


def train_batches(batch_size: int, seq_len: int, device: str | object = "cpu"):
    """Random windows of the training split, forever: (x, y) int64 tensors of shape (B, T)."""
    import numpy as np
    import torch

    data = np.memmap(data_dir() / "train.bin", dtype=np.uint8, mode="r")
    gen = np.random.default_rng(int(os.environ.get("AUTORESEARCH_SEED", "0")))
    cuda = str(device).startswith("cuda")
    offsets = np.arange(seq_len + 1)
    while True:
        starts = gen.integers(0, len(data) - seq_len - 1, size=batch_size)
        chunk = torch.from_numpy(data[starts[:, None] + offsets].astype(np.int64))
        if cuda:
            chunk = chunk.pin_memory().to(device, non_blocking=True)
        yield chunk[:, :-1], chunk[:, 1:]


# --- the trusted evaluator -----------------------------------------------------------------------
# A scorer and two model processes. Only a model process (`python prepare.py model`) imports
# train.py: it rebuilds the model, loads the weights and answers (B, T) byte windows with float32
# logits over a pipe. The scorer never runs a line of train.py: it holds the split's bytes, decides
# what to send to whom, turns the logits into log-probabilities itself and prints the result.
#
# Windows are T bytes overlapping by one, scored on their own bytes (logits[t] against x[t+1]).
# Each model process is fresh, sees only its own requests, and never runs train.py beside the other:
#   main       first answers every window once, in a secret order;
#   reference  then first answers one batch of canary windows, which main answered in its stream:
#              a fresh process must agree with main, so no answer may depend on other windows
#              (memory, training at test time, rows of a batch mixing). Then it answers spliced
#              probes (a window's head, a donor window's tail from a uniformly random cut in
#              1..T-1): its log-probabilities before the cut must equal main's for the original,
#              so no answer may depend on a later byte. A probe's original is never a canary,
#              never probed twice and never a donor, so the reference never sees a byte of an
#              original past its cut and cannot answer a probe as main did by remembering.
# Main goes first because processes one after another on one kernel can still signal (which
# pages of a file are cached survives a process): had the reference gone first, a few thousand
# bits (which windows it was asked) would let main answer those honestly and peek everywhere
# else. This way round, main cannot know what will be checked, and to pass the probes a
# peeking main would have to hand over every byte it peeked at. The runner also evicts the
# run's own files from the page cache between the two.
# Comparisons use log-probabilities (what is scored) with an absolute tolerance, so shifting or
# scaling logits cannot widen it, and a comparison that is not a number fails. The scorer bounds
# each process's start-up and each answer's time.

PROBES = 200  # spliced windows per evaluation
# A model peeking at a share f of (window, position) pairs escapes one probe with chance (1 - f),
# all of them with (1 - f)^PROBES: f = 3%: 0.97^200 = 0.23% (caught 99.8% of the time); f = 5%:
# 0.95^200 = 0.004%; f = 1%: 0.99^200 = 13%, for a gain of at most ~1% of the bits.
LOGPROB_TOLERANCE = 1e-3  # nats: the most a peek can gain per byte and still pass
EVAL_TOKENS = 8192  # bytes per request: B = EVAL_TOKENS // T rows, the same B for every request
LOAD_LIMIT_S = 120.0  # a model process must say hello within this (imports, weights, device)
ANSWER_BASE_S, ANSWER_FACTOR = 30.0, 10.0  # an answer is due within base + factor * median answer time
FLOOR_SLACK = 1e-3  # bits/byte below a builtin split's floor that are still believed (the first byte)


def _prctl_not_dumpable() -> None:
    """No process of the same user may open this one's memory (/proc/self/mem) or ptrace it."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        pass


class Channel:
    """One model process seen from the scorer: a pipe to write requests, one to read answers."""

    def __init__(self, name: str, read_fd: int, write_fd: int) -> None:
        self.name, self.rfd, self.wfd = name, read_fd, write_fd
        self.seq_len = 0
        try:  # an answer is megabytes: read it in fewer, larger pieces than the default 64 KiB
            import fcntl

            fcntl.fcntl(read_fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        except (OSError, AttributeError):
            pass
        self.answer_seconds: list[float] = []
        self.load_seconds = 0.0  # from its gate opening to its hello: train.py's import, model and weights
        self.first_answer_seconds = 0.0  # from its first request to that answer
        self.answering_seconds = 0.0  # from its first request to its last answer

    def read_exact(self, n: int, deadline: float, what: str) -> bytearray:
        import select

        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                raise HarnessError(f"eval: the {self.name} model process took too long for {what}")
            chunk = os.readv(self.rfd, [view[got:]])  # straight into place: an answer is megabytes
            if not chunk:
                raise HarnessError(f"eval: the {self.name} model process died (during {what})")
            got += chunk
        return buf

    def ready(self, deadline: float) -> None:
        """The trusted start-up is done (imports, weights, device); train.py has not run yet."""
        if self.read_exact(1, deadline, f"start-up (limit {LOAD_LIMIT_S:.0f}s)") != b"R":
            raise HarnessError(f"eval: the {self.name} model process failed to start")

    def hello(self, deadline: float) -> int:
        data = self.read_exact(6, deadline, f"start-up (limit {LOAD_LIMIT_S:.0f}s)")
        if data[:2] != b"OK":
            raise HarnessError(f"eval: the {self.name} model process failed to start")
        # The context the model was trained for (its SEQ_LEN): shorter only costs the model.
        self.seq_len = max(2, min(MAX_SEQ_LEN, int.from_bytes(data[2:], "little")))
        return self.seq_len

    def send(self, x) -> None:
        import numpy as np

        B, T = x.shape
        try:
            os.write(self.wfd, np.array([B, T], dtype="<u4").tobytes() + x.astype(np.uint8).tobytes())
        except (BrokenPipeError, OSError):
            raise HarnessError(f"eval: the {self.name} model process died") from None

    def receive(self, B: int, T: int):
        """log-probabilities (B, T, 256) as float32, from logits validated for shape and finiteness."""
        import numpy as np

        spent = sorted(self.answer_seconds)
        limit = ANSWER_BASE_S + ANSWER_FACTOR * (spent[len(spent) // 2] if spent else LOAD_LIMIT_S / ANSWER_FACTOR)
        start = time.monotonic()
        head = self.read_exact(16, start + limit, f"an answer (limit {limit:.0f}s)")
        shape = tuple(int(v) for v in np.frombuffer(head, dtype="<u4"))
        if shape[0] != 3 or shape[1:] != (B, T, VOCAB_SIZE):
            # The shape sent is not repeated: its numbers could spell text the model was sent.
            raise HarnessError(f"eval: model output has the wrong shape: expected {(B, T, VOCAB_SIZE)} logits")
        data = self.read_exact(B * T * VOCAB_SIZE * 4, start + limit, f"an answer (limit {limit:.0f}s)")
        self.answer_seconds.append(time.monotonic() - start)
        logits = np.frombuffer(data, dtype="<f4").reshape(B, T, VOCAB_SIZE)
        if not np.isfinite(logits).all():
            raise HarnessError("eval: model produced NaN or infinite logits")
        return log_probs(logits)


def log_probs(logits):
    """log_softmax over the last axis in float32 (a few 1e-7 nats from float64, far inside the
    tolerance, at a quarter of the cost). Logits further apart than float32 reaches are held at
    -1e30 below the largest instead of becoming -inf, so every comparison stays a number."""
    import numpy as np

    z = logits - logits.max(axis=2, keepdims=True)
    np.maximum(z, np.float32(-1e30), out=z)
    z -= np.log(np.exp(z).sum(axis=2, keepdims=True))
    return z


def _agree(a, b) -> bool:
    """Equal within the tolerance everywhere; NaN anywhere is disagreement."""
    import numpy as np

    return bool((np.abs(a - b) <= LOGPROB_TOLERANCE).all())


def _windows(data, T: int):
    """Windows of T bytes overlapping by one; the tail window is padded on the left with bytes
    already scored, and `skip_last` of its positions are not scored again."""
    starts = list(range(0, len(data) - 1, T - 1))
    windows = [data[s : s + T] for s in starts]
    skip_last = 0
    if len(windows[-1]) < T:
        skip_last = T - len(windows[-1])
        windows[-1] = data[len(data) - T :]
    return windows, skip_last


def score(data: bytes, channels: list[Channel], lifecycle: Lifecycle) -> tuple[float, float]:
    """Bits per byte of `data` under the model behind channels (main, reference); raises
    HarnessError with a one-line reason for any misbehaviour.

    The model processes run train.py one after another, never both at once: main, then the
    reference, whose gate opens only once main is gone. Processes alive together could pass notes
    (a lock on a file they can both read is enough)."""
    import numpy as np

    t0 = time.time()
    split = np.frombuffer(data, dtype=np.uint8)
    main, reference = channels

    def open_up(ch: Channel) -> int:
        """Its trusted start-up, then its gate, then train.py's own loading, timed: what a model does
        before it answers is bounded by the daemon against the untouched baseline's (eval_profile)."""
        lifecycle.warm(ch.name)
        ch.ready(time.monotonic() + LOAD_LIMIT_S)
        lifecycle.begin(ch)
        opened = time.monotonic()
        seq_len = ch.hello(opened + LOAD_LIMIT_S)
        ch.load_seconds = time.monotonic() - opened
        return seq_len

    T = open_up(main)
    loaded = time.time() - t0
    lifecycle.warm(reference.name)  # the reference's trusted start-up runs while main answers
    windows, skip_last = _windows(split, T)
    B = max(1, EVAL_TOKENS // T)
    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))  # secret: no model can predict it
    n = len(windows)
    canaries, probes = _checks(windows, B, rng)
    kept = {i for i, _, _ in probes} | set(canaries)  # windows whose answers main must match
    streams = {  # per channel: batches of (row ids, rows); the reference's canary batch comes first
        main.name: _batches(list(rng.permutation(n)), lambda j: windows[j], B),
        reference.name: _batches(canaries, lambda j: windows[j], B)
        + _batches(list(range(n, n + len(probes))), lambda j: probes[j - n][2], B),
    }
    answers: dict[int, object] = {}  # main's, for the windows the reference answers too
    total_bits = 0.0
    count = 0

    def on_answer(ch: Channel, ids: list[int], logp) -> None:
        """Main's answers are scored (and kept where the reference will be asked too); each of the
        reference's is checked against main's as it comes, so a model caught early costs no more."""
        nonlocal total_bits, count
        for k, j in enumerate(ids):
            if ch is main:
                targets = windows[j][1:].astype(np.int64)
                nats = -logp[k, np.arange(T - 1), targets].astype(np.float64)
                if j == n - 1 and skip_last:
                    nats = nats[skip_last:]
                total_bits += float(nats.sum()) / math.log(2)
                count += len(nats)
                if j in kept:
                    answers[j] = logp[k].copy()
            elif j < n and not _agree(answers[j], logp[k]):
                raise HarnessError("eval: answers depend on other windows: a window scored differently alone than "
                                   "in the stream (state across windows, training while scored, or rows of a batch "
                                   "mixing)")
            elif j >= n and not _agree(answers[probes[j - n][0]][: probes[j - n][1]], logp[k, : probes[j - n][1]]):
                raise HarnessError(f"eval: model is not causal: log-probabilities before position {probes[j - n][1]} "
                                   "changed when later bytes changed")

    for ch in (main, reference):
        if ch is not main and open_up(ch) != T:
            raise HarnessError("eval: model processes disagree on their context length")
        _drive([ch], streams, B, T, on_answer)
        lifecycle.end(ch)
    print(f"first model loaded in {loaded:.1f}s; {sum(len(ch.answer_seconds) for ch in channels)} requests of "
          f"{B}x{T}; all done in {time.time() - t0:.1f}s", file=sys.stderr, flush=True)
    return total_bits / count, time.time() - t0


def _checks(windows: list, B: int, rng) -> tuple[list[int], list[tuple[int, int, object]]]:
    """The canary windows (one batch) and the probes (original window, cut, spliced bytes).

    A probe's original is never a canary, never probed twice and never another probe's donor, so
    the reference, which answers all of them, never sees a byte of an original past its cut. (The
    one byte two neighbouring windows share is left: it could tell a probe cut right before its
    window's last byte, 1 in T-1 of them.)"""
    import numpy as np

    n, T = len(windows), len(windows[0])
    canaries = [int(i) for i in rng.choice(n, size=max(1, min(B, n // 4)), replace=False)]
    originals = [int(i) for i in rng.permutation(sorted(set(range(n)) - set(canaries)))]
    originals = originals[: min(PROBES, len(originals) - 1)]  # at least one window left for donors
    donors = sorted(set(range(n)) - set(originals))
    probes = []
    for i in originals:
        for _ in range(20):  # a cut where the donor's next byte differs, so a peek shows
            cut, donor = int(rng.integers(1, T)), windows[donors[int(rng.integers(len(donors)))]]
            if donor[cut] != windows[i][cut]:
                probes.append((i, cut, np.concatenate([windows[i][:cut], donor[cut:]])))
                break
    return canaries, probes


def _batches(ids: list[int], row, B: int) -> list[tuple[list[int], object]]:
    import numpy as np

    out = []
    for s in range(0, len(ids), B):
        chunk = [int(j) for j in ids[s : s + B]]
        rows = [row(j) for j in chunk]
        rows += [rows[0]] * (B - len(rows))  # one shape for every request: the model cannot tell
        out.append((chunk, np.stack(rows)))
    return out


def _drive(channels: list[Channel], streams: dict, B: int, T: int, on_answer) -> None:
    """Send every channel its batches, two in flight each (a request fits in a pipe's buffer), and
    hand each answer over as it comes, from whichever process is ready first."""
    import select

    pending = {ch.name: list(streams[ch.name]) for ch in channels}
    in_flight: dict[str, list[list[int]]] = {ch.name: [] for ch in channels}
    by_fd = {ch.rfd: ch for ch in channels}
    first_sent: dict[str, float] = {}

    def top_up(ch: Channel) -> None:
        while pending[ch.name] and len(in_flight[ch.name]) < 2:
            ids, rows = pending[ch.name].pop(0)
            ch.send(rows)
            first_sent.setdefault(ch.name, time.monotonic())
            in_flight[ch.name].append(ids)

    for ch in channels:
        top_up(ch)
    while any(in_flight.values()):
        busy = [ch.rfd for ch in channels if in_flight[ch.name]]
        ready = select.select(busy, [], [], 1.0)[0] or busy[:1]  # none ready: wait on one, with its limit
        for fd in ready:
            ch = by_fd[fd]
            ids = in_flight[ch.name].pop(0)
            on_answer(ch, ids, ch.receive(B, T))
            ch.answering_seconds = time.monotonic() - first_sent[ch.name]
            if not ch.first_answer_seconds:
                ch.first_answer_seconds = ch.answering_seconds
            top_up(ch)


def serve_model(checkpoint: Path, gate_fd: int | None = None) -> int:
    """The model process: answers (B, T) byte windows with float32 logits, nothing else.

    With a gate, the trusted start-up (imports, the weights, the device) runs first and train.py
    is imported only once a byte arrives on the gate: a process may be started while another runs
    train.py, and so starts quicker, but never runs a line of train.py beside it."""
    proto = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever train.py prints lands on stderr, never in the protocol
    import numpy as np
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        state = torch.load(checkpoint / "model.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError:
        print(f"eval: no weights at {checkpoint / 'model.pt'}: train.py must save model.state_dict() there", file=sys.stderr)
        return 1
    except Exception as e:  # any way the weights fail to come back is the model's failure
        print(f"eval: checkpoint does not load: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1
    if device == "cuda":
        torch.zeros(1, device=device)  # the device's context, before the gate
    proto.write(b"R")  # the trusted start-up is done: the scorer times what train.py does from here
    proto.flush()
    if gate_fd is not None and not os.read(gate_fd, 1):
        return 0  # closed without a go: this process is not needed
    sys.path.insert(0, str(HERE))
    try:
        import train

        model = train.build_model()
        model.load_state_dict(state, strict=True)
    except Exception as e:  # any way the model fails to come back is the model's failure
        print(f"eval: checkpoint does not load: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1
    model = model.to(device).eval()
    seq_len = getattr(train, "SEQ_LEN", MAX_SEQ_LEN)
    proto.write(b"OK" + int(seq_len if isinstance(seq_len, int) and 0 < seq_len < 2**31 else MAX_SEQ_LEN).to_bytes(4, "little"))
    proto.flush()
    while len(head := sys.stdin.buffer.read(8)) == 8:
        B, T = (int(v) for v in np.frombuffer(head, dtype="<u4"))
        x = torch.frombuffer(bytearray(sys.stdin.buffer.read(B * T)), dtype=torch.uint8).long().view(B, T)
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda"):
            out = model(x.to(device))
        if isinstance(out, torch.Tensor):
            arr = out.detach().float().cpu().contiguous().numpy()
            proto.write(np.array([3, *arr.shape], dtype="<u4").tobytes() if arr.ndim == 3 else np.zeros(4, "<u4").tobytes())
            if arr.ndim == 3 and arr.shape == (B, T, VOCAB_SIZE):
                proto.write(arr.astype("<f4").tobytes())
        else:
            proto.write(np.zeros(4, "<u4").tobytes())
        proto.flush()
    return 0


ROLES = ("main", "reference")


class Lifecycle:
    """Starts a model process when the scorer needs it and ends it when the scorer is done with it.

    In the daemon the runner does both, told over a control pipe (`ROLE warm`, `ROLE start` and
    `ROLE done` lines), since the scorer's own sandbox cannot start or end another; standalone,
    `_LocalModels`. `warm` starts a process behind its gate (see serve_model); `start` opens the
    gate, or starts the process when it was not warmed."""

    def __init__(self, control_fd: int | None = None) -> None:
        self.control_fd = control_fd
        self.warmed: set[str] = set()

    def warm(self, role: str) -> None:
        if role not in self.warmed:
            self.warmed.add(role)
            self._say(f"{role} warm")

    def begin(self, ch: Channel) -> None:
        self._say(f"{ch.name} start")

    def end(self, ch: Channel) -> None:
        try:
            os.close(ch.wfd)  # end of requests: a model process exits on EOF
        except OSError:
            pass
        self._say(f"{ch.name} done")

    def _say(self, line: str) -> None:
        if self.control_fd is not None:
            try:
                os.write(self.control_fd, (line + "\n").encode())
            except OSError:
                raise HarnessError("eval: the runner stopped listening") from None


def _refuse_below_floor(data: bytes, bpb: float) -> None:
    for name, (_, sha, floor) in SPLITS.items():
        if sha256(data) == sha and bpb < floor - FLOOR_SLACK:
            raise HarnessError(f"eval: below the entropy floor of {name} ({bpb:.6f} < {floor:.6f} bits/byte): "
                               "no model can do that; the model must know the text")


def evaluate_over_fds(data: bytes, fds: list[tuple[int, int]],
                      lifecycle: Lifecycle) -> tuple[float, float, dict[str, float]]:
    """The sandboxed scorer: model processes reached through inherited pipes, started and ended by
    whoever holds the other ends of them. Also its profile: the longest a model process took to load
    (from its gate), to give its first answer and to give them all, the time a model could spend on
    more than scoring."""
    channels = [Channel(role, r, w) for role, (r, w) in zip(ROLES, fds)]
    bpb, seconds = score(data, channels, lifecycle)
    _refuse_below_floor(data, bpb)
    profile = {"load": max(ch.load_seconds for ch in channels),
               "first_answer": max(ch.first_answer_seconds for ch in channels),
               "answers": max(ch.answering_seconds for ch in channels)}
    return bpb, seconds, profile


class _LocalModels(Lifecycle):
    """Standalone evaluation: unsandboxed model processes on pipes made up front, one at a time."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__()
        import tempfile

        self.checkpoint = checkpoint
        self.logs = {role: tempfile.TemporaryFile() for role in ROLES}
        self.child_ends: dict[str, tuple[int, int]] = {}
        self.fds: list[tuple[int, int]] = []
        for role in ROLES:
            to_model_r, to_model_w = os.pipe()
            from_model_r, from_model_w = os.pipe()
            self.child_ends[role] = (to_model_r, from_model_w)
            self.fds.append((from_model_r, to_model_w))
        self.procs: dict[str, object] = {}
        self.gates: dict[str, int] = {}  # write ends of the gates of processes started

    def warm(self, role: str) -> None:
        import subprocess

        if role in self.procs:
            return
        stdin, stdout = self.child_ends[role]
        gate_r, self.gates[role] = os.pipe()
        self.procs[role] = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "model", "--checkpoint", str(self.checkpoint),
             "--gate", str(gate_r)],
            stdin=stdin, stdout=stdout, stderr=self.logs[role], cwd=HERE, pass_fds=(gate_r,))
        for fd in (stdin, stdout, gate_r):
            os.close(fd)

    def begin(self, ch: Channel) -> None:
        if ch.name not in self.gates:
            self.warm(ch.name)
        os.write(self.gates[ch.name], b"g")

    def end(self, ch: Channel) -> None:
        super().end(ch)
        self._stop(ch.name)

    def _stop(self, role: str) -> None:
        if role in self.gates:
            os.close(self.gates.pop(role))
        proc = self.procs.pop(role, None)
        if proc is not None:
            proc.kill()  # type: ignore[attr-defined]
            proc.wait()  # type: ignore[attr-defined]

    def close(self) -> None:
        for role in list(self.procs):
            self._stop(role)

    def reason(self) -> str | None:
        for log in self.logs.values():  # the model's own reason, when it gave one
            log.seek(0)
            said = [line for line in log.read().decode("utf-8", "replace").splitlines() if line.startswith("eval: ")]
            if said:
                return said[-1]
        return None


def evaluate(checkpoint: Path, split: str = "val") -> tuple[float, float, dict[str, float]]:
    """Standalone, for people: score a checkpoint on a split with three unsandboxed model processes."""
    data = check_split(split)
    if not (checkpoint / "model.pt").exists():
        raise HarnessError(f"eval: no weights at {checkpoint / 'model.pt'}: "
                           "train.py must save model.state_dict() there")
    models = _LocalModels(checkpoint)
    try:
        return evaluate_over_fds(data, models.fds, models)
    except HarnessError as e:
        if "model process" in str(e) and (said := models.reason()):
            raise HarnessError(said) from None
        raise
    finally:
        models.close()


# --- command line -----------------------------------------------------------------------------


def _model_fds(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [tuple(int(v) for v in part.split(":")) for part in text.split(",")]
    except ValueError:
        pairs = []
    if len(pairs) != len(ROLES) or any(len(p) != 2 for p in pairs):
        raise HarnessError(f"--model-fds wants {len(ROLES)} READ:WRITE pairs ({', '.join(ROLES)}), got {text!r}")
    return [(p[0], p[1]) for p in pairs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="prepare",
                        choices=["prepare", "check", "eval", "model", "new-splits"])
    parser.add_argument("--source", default="builtin", help="builtin, a path, or one of: " + ", ".join(DOWNLOADS))
    parser.add_argument("--force-val", action="store_true", help="write a new val.txt from this source")
    parser.add_argument("--checkpoint", type=Path, help="eval, model: the directory holding model.pt")
    parser.add_argument("--split", default="val", choices=list(SPLITS), help="eval: which split to score")
    parser.add_argument("--model-fds", help="eval: pipes to the model processes, split bytes on stdin")
    parser.add_argument("--control-fd", type=int, help="eval: where to say when each model process is needed")
    parser.add_argument("--gate", type=int, help="model: import train.py only once a byte arrives here")
    args = parser.parse_args(argv)
    try:
        if args.command == "model":
            return serve_model(args.checkpoint, args.gate)
        if args.command == "check":
            check()
            print(f"ok: data in {data_dir()}, val.txt verified")
        elif args.command == "new-splits":
            new_splits()
        elif args.command == "eval":
            if args.model_fds is not None:
                lifecycle = Lifecycle(args.control_fd)
                lifecycle.warm("main")  # the first model process starts up beside the scorer's own
                # Everything the scorer needs is imported before any model answers, and no
                # process of this user may read or write its memory.
                import select  # noqa: F401

                import numpy.random  # noqa: F401

                _prctl_not_dumpable()
                fds = _model_fds(args.model_fds)
                bpb, seconds, profile = evaluate_over_fds(sys.stdin.buffer.read(), fds, lifecycle)
            elif args.checkpoint is not None:
                bpb, seconds, profile = evaluate(args.checkpoint, args.split)
            else:
                raise HarnessError("eval needs --checkpoint DIR (or --model-fds, as the daemon runs it)")
            # The trusted lines come last: the daemon reads the last three lines.
            print(f"eval_profile: load {profile['load']:.3f} first_answer {profile['first_answer']:.3f} "
                  f"answers {profile['answers']:.3f}\n"
                  f"{args.split}_bpb: {bpb:.6f}\neval_seconds: {seconds:.1f}", flush=True)
        else:
            prepare(args.source, args.force_val)
    except HarnessError as e:
        print(str(e), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
