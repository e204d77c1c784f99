"""A small modern GPT trained from scratch on bytes for a fixed wall-clock budget.

This is the one file the research agent edits. Contract with the harness (prepare.py):
build_model() returns the model whose forward(idx) gives logits (B, T, 256); training runs only
under __main__, for prepare.TIME_BUDGET seconds, saves the weights to $AUTORESEARCH_OUT/model.pt
and prints last a `---` line then `key: value` lines. The metric is computed by `prepare.py eval`.
Seeds come from $AUTORESEARCH_SEED, so a rerun with a new seed measures the noise.
"""
from __future__ import annotations

import math
import os
import random
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import MAX_SEQ_LEN, TIME_BUDGET, VOCAB_SIZE, train_batches

# --- hyperparameters ----------------------------------------------------------------------------
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the GPU when there is one
ON_GPU = DEVICE == "cuda"
DEPTH = 12 if ON_GPU else 2  # transformer blocks
MODEL_DIM = 768 if ON_GPU else 128  # residual stream width
N_HEADS = 6 if ON_GPU else 4  # attention heads (head dim = MODEL_DIM / N_HEADS)
MLP_RATIO = 4  # hidden width of the MLP relative to MODEL_DIM
SEQ_LEN = 1024 if ON_GPU else 128  # training context in bytes (evaluation uses MAX_SEQ_LEN)
BATCH_SIZE = 64 if ON_GPU else 16  # sequences per step
MATRIX_LR = 0.02  # Muon learning rate for the 2-D weights of the blocks
ADAM_LR = 0.004 if ON_GPU else 0.006  # AdamW learning rate for embeddings, head and gains
WEIGHT_DECAY = 0.0  # AdamW weight decay
WARMUP_FRAC = 0.02  # share of the budget spent warming the learning rate up
WARMDOWN_FRAC = 0.4  # share of the budget at the end spent decaying it to zero
WARMUP_STEPS = 3  # untimed steps that trigger compilation before the clock starts
COMPILE = ON_GPU  # torch.compile the model (CUDA only)
SEED = int(os.environ.get("AUTORESEARCH_SEED", "1337"))  # the harness's seed: initialisation (and data order)
RECENT_STEPS = 8  # a step starts only if the slowest of this many recent steps would still fit
LOG_EVERY = 25 if ON_GPU else 10  # steps between progress lines
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s by GPU name


# --- model --------------------------------------------------------------------------------------
def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotary(x: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of channels by position-dependent angles (x: B, H, T, D)."""
    T, D = x.size(-2), x.size(-1)
    freqs = 1.0 / (10000 ** (torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D))
    angles = torch.outer(torch.arange(T, device=x.device, dtype=torch.float32), freqs)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.up = nn.Linear(dim, MLP_RATIO * dim, bias=False)
        self.down = nn.Linear(MLP_RATIO * dim, dim, bias=False)
        nn.init.zeros_(self.proj.weight)  # each block starts as the identity
        nn.init.zeros_(self.down.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(rms_norm(x)).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k = rotary(rms_norm(q)), rotary(rms_norm(k))  # QK-norm keeps attention logits tame
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.down(F.relu(self.up(rms_norm(x))).square())


class GPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, MODEL_DIM)
        self.blocks = nn.ModuleList(Block(MODEL_DIM, N_HEADS) for _ in range(DEPTH))
        self.head = nn.Linear(MODEL_DIM, VOCAB_SIZE, bias=False)
        nn.init.normal_(self.embed.weight, std=1.0)
        nn.init.zeros_(self.head.weight)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = rms_norm(self.embed(idx))
        for block in self.blocks:
            x = block(x)
        return self.head(rms_norm(x)).float()


def build_model() -> nn.Module:
    torch.manual_seed(SEED)
    return GPT()


# --- optimizer ----------------------------------------------------------------------------------
def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximate the nearest semi-orthogonal matrix with a quintic Newton-Schulz iteration."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16() if g.is_cuda else g.float()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum whose update is orthogonalized: every direction of a matrix moves at one speed."""

    def __init__(self, params, lr: float, momentum: float = 0.95) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                buf = self.state[p].setdefault("buf", torch.zeros_like(p.grad))
                buf.mul_(group["momentum"]).add_(p.grad)
                update = orthogonalize(p.grad.add(buf, alpha=group["momentum"]))
                p.add_(update, alpha=-group["lr"] * max(1.0, p.size(0) / p.size(1)) ** 0.5)


def lr_scale(progress: float) -> float:
    """Learning-rate multiplier as a function of the share of the budget spent."""
    if progress < WARMUP_FRAC:
        return progress / WARMUP_FRAC
    if progress > 1 - WARMDOWN_FRAC:
        return max(0.0, (1 - progress) / WARMDOWN_FRAC)
    return 1.0


# --- training -----------------------------------------------------------------------------------
class OutOfTime(Exception):
    """The budget ran out in the middle of a step."""


class Budget:
    """Training time against TIME_BUDGET. A step starts only if the slowest recent step would still
    fit, and its optimizer update only if the slowest recent update would: on a busy machine step
    times jump, and a mean would let the last step run over. On a CPU the clock is also checked
    inside the forward and backward passes (hooks). A step that would run past the budget is
    dropped at once; its time still counts. On a GPU the kernels run asynchronously, so there only
    the predictions apply."""

    def __init__(self) -> None:
        self.trained = 0.0  # seconds of timed steps, dropped ones included: never clipped
        self.slowest = 0.0
        self.recent: deque[float] = deque(maxlen=RECENT_STEPS)
        self.recent_updates: deque[float] = deque(maxlen=RECENT_STEPS)  # optimizer phases, warm-up too
        self.step_start: float | None = None  # None outside timed steps

    def room_for_another_step(self) -> bool:
        return not self.recent or self.trained + max(self.recent) <= TIME_BUDGET

    def start(self, timed: bool) -> None:
        self.step_start = time.perf_counter() if timed else None

    def check(self, ahead: float = 0.0) -> None:
        """Raise OutOfTime if the budget is spent, or would be `ahead` seconds from now."""
        if self.step_start is not None and self.trained + time.perf_counter() - self.step_start + ahead > TIME_BUDGET:
            raise OutOfTime

    def hook(self, *_: object) -> None:
        self.check()

    def update(self, optimizers: list[torch.optim.Optimizer], warm: bool) -> None:
        """Run the optimizers unless the slowest recent update would end past the budget."""
        if self.step_start is not None and self.recent_updates:
            self.check(max(self.recent_updates))
        start = time.perf_counter()
        for opt in optimizers:
            opt.step()
        if warm:  # the very first update pays one-off costs that would skew the prediction
            self.recent_updates.append(time.perf_counter() - start)

    def finish(self, completed: bool) -> None:
        if self.step_start is not None:
            took = time.perf_counter() - self.step_start
            self.trained, self.slowest = self.trained + took, max(self.slowest, took)
            if completed:
                self.recent.append(took)
        self.step_start = None

    def watch(self, model: nn.Module) -> None:
        for module in model.modules():
            module.register_forward_pre_hook(self.hook)
        for p in model.parameters():
            p.register_post_accumulate_grad_hook(self.hook)


def main() -> None:
    t_start = time.time()
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.backends.cuda.matmul.allow_tf32 = True
    model = build_model().to(DEVICE)
    matrices = [p for p in model.blocks.parameters() if p.ndim == 2]
    others = [p for n, p in model.named_parameters() if not n.startswith("blocks.")]
    optimizers = [
        Muon(matrices, lr=MATRIX_LR),
        torch.optim.AdamW(others, lr=ADAM_LR, betas=(0.9, 0.95), weight_decay=WEIGHT_DECAY, fused=ON_GPU),
    ]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    step_model = torch.compile(model) if COMPILE else model
    batches = train_batches(BATCH_SIZE, SEQ_LEN, DEVICE)
    n_params = sum(p.numel() for p in model.parameters())
    flops_per_token = 6 * n_params + 12 * DEPTH * MODEL_DIM * SEQ_LEN  # matmuls + attention

    budget = Budget()
    if not ON_GPU:
        budget.watch(model)
    step, tokens, loss_value = 0, 0, float("nan")
    while budget.room_for_another_step():
        timed = step >= WARMUP_STEPS  # compilation and warm-up are not charged to the budget
        budget.start(timed)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lr_scale(budget.trained / TIME_BUDGET)
        x, y = next(batches)
        try:
            with torch.autocast("cuda", torch.bfloat16, enabled=ON_GPU):
                loss = F.cross_entropy(step_model(x).view(-1, VOCAB_SIZE), y.reshape(-1))
            loss.backward()
            budget.update(optimizers, warm=step > 0)
        except OutOfTime:
            model.zero_grad(set_to_none=True)
            budget.finish(completed=False)
            break
        model.zero_grad(set_to_none=True)
        if step % LOG_EVERY == 0 or step == WARMUP_STEPS:
            loss_value = loss.item()  # syncs the GPU, so only now and then
            if not math.isfinite(loss_value) or loss_value > 100:
                print(f"abort: loss is {loss_value} at step {step}: training diverged", flush=True)
                raise SystemExit(1)
            print(f"step {step} | loss {loss_value:.4f} | {budget.trained:.1f}s of {TIME_BUDGET:.0f}s", flush=True)
        if ON_GPU:
            torch.cuda.synchronize()
        budget.finish(completed=True)
        step += 1
        tokens += x.numel() if timed else 0
    trained = budget.trained
    print(f"stopped at {trained:.2f}s of {TIME_BUDGET:.0f}s after {step} steps; slowest step {budget.slowest:.2f}s",
          flush=True)

    out = Path(os.environ.get("AUTORESEARCH_OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "model.pt")

    gpu_name = torch.cuda.get_device_name() if ON_GPU else ""
    peak = next((f for name, f in PEAK_FLOPS.items() if name in gpu_name), 0.0)
    mfu = 100 * flops_per_token * tokens / trained / peak if peak and trained else 0.0
    print("---")
    print(f"training_seconds: {trained:.1f}")
    print(f"total_seconds: {time.time() - t_start:.1f}")
    print(f"peak_vram_mb: {torch.cuda.max_memory_allocated() / 2**20 if ON_GPU else 0.0:.1f}")
    print(f"mfu_percent: {mfu:.2f}")
    print(f"total_tokens_M: {tokens / 1e6:.1f}")
    print(f"num_steps: {step}")
    print(f"slowest_step_seconds: {budget.slowest:.2f}")
    print(f"num_params_M: {n_params / 1e6:.1f}")
    print(f"depth: {DEPTH}")


if __name__ == "__main__":
    assert MAX_SEQ_LEN >= SEQ_LEN
    main()
