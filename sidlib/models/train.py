"""Training-loop utilities shared by every torch model in sidlib (SASRec, SID-SASRec, SID-GR).

* `pick_device("auto" | "cpu" | "cuda" | "cuda:1" | "mps")`, `set_seed(seed)`.
* `Checkpointer(folder)`: atomic `save(state, name)` / `load(name)` of `<folder>/<name>.pt`.
* `EarlyStopping(patience)`: tracks the best monitored value; state round-trips for resume.
* `fit_loop(model, optimizer, train_epoch, evaluate, ...)`: epochs, evaluation every
  `eval_every` epochs, early stopping, a "last" checkpoint every epoch (model, optimizer,
  scheduler, epoch, early-stopping state, history) plus a "best" one, `resume=True` to go on
  from "last", and the best weights restored at the end. Torch's global RNG is re-seeded
  from (seed, epoch) at the start of every epoch, so a resumed run repeats exactly what an
  uninterrupted run would have done (on the same device); `epoch_rng(seed, epoch)` gives the
  matching numpy generator for shuffling.

Several processes (`accelerate launch --multi_gpu --num_processes N ...`, DDP through the
`accelerate` library): `distributed()` is the run's `accelerate.Accelerator` (None in a single
process), `loss_fn(model)` routes `model.loss` through DistributedDataParallel so backward()
averages the gradients, `shard(batches)` is this process's share of an epoch's batches, and
`fit_loop` lets only the main process evaluate, checkpoint and log while every process follows
its early-stopping decision. A single process never touches torch.distributed or accelerate:
it computes exactly what it did before.
"""
from __future__ import annotations

import copy
import functools
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, broadcast_object_list

T = TypeVar("T")

# Variables a launcher sets to the number of processes: torchrun (`accelerate launch
# --multi_gpu`) sets WORLD_SIZE, mpirun (`accelerate launch --cpu --mpirun_hostfile`) the others.
_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


@functools.lru_cache(maxsize=1)
def _accelerator() -> Accelerator:
    return Accelerator(
        # without a GPU, accelerate would treat each process as a lone run (no gloo group): say CPU
        cpu=not torch.cuda.is_available(),
        # the other processes wait in a collective while the main one evaluates a large catalogue
        # (SID-GR beam search), which can outlast the default 10-30 min collective timeout
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=2))],
    )


def distributed() -> Accelerator | None:
    """The run's `accelerate.Accelerator` when this process is one of several, else None.

    Decided from the launcher's environment first, so a single process (notebook, tests) never
    imports accelerate or creates a process group."""
    if max(int(os.environ.get(k) or 1) for k in _WORLD_SIZE_VARS) <= 1:
        return None
    acc = _accelerator()
    return acc if acc.num_processes > 1 else None


def world_size() -> int:
    acc = distributed()
    return 1 if acc is None else acc.num_processes


def is_main_process() -> bool:
    """True in a single process and in the main one of several (the one that evaluates and writes)."""
    acc = distributed()
    return acc is None or acc.is_main_process


def wait_for_everyone() -> None:
    """A barrier across processes (no-op in a single process)."""
    acc = distributed()
    if acc is not None:
        acc.wait_for_everyone()


def end_distributed() -> None:
    """Tear the process group down at the end of a launched run (no-op in a single process)."""
    acc = distributed()
    if acc is not None:
        acc.wait_for_everyone()
        acc.end_training()


class _LossForward(torch.nn.Module):
    """DDP all-reduces gradients only for what runs through its forward(): this module's
    forward is `model.loss`, and it owns the model's parameters (no copy)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.model.loss(*args, **kwargs)


def loss_fn(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """`model.loss` to call in the training step.

    Several processes: the same call through DistributedDataParallel (`accelerator.prepare`),
    so loss.backward() averages the gradients across processes and every optimizer takes the
    same step. The model itself stays unwrapped: its state_dict (checkpoints) has no prefix."""
    acc = distributed()
    if acc is None:
        return model.loss  # type: ignore[return-value]
    return acc.prepare(_LossForward(model))


def shard(batches: list[T]) -> list[T]:
    """This process's share of an epoch's batches (all of them in a single process).

    Every process builds the same batch list from (seed, epoch) and takes a contiguous slice;
    the slices are padded to equal length (the last batch repeated), because DDP all-reduces at
    every backward and one extra step on one process would leave the others waiting."""
    acc = distributed()
    if acc is None or not batches:
        return batches
    with acc.split_between_processes(batches, apply_padding=True) as mine:
        return list(mine)


def pick_device(pref: str = "auto") -> torch.device:
    """"auto" = cuda if available, else mps, else cpu; anything else is passed to torch.device.

    Under `accelerate launch` with several processes the launcher decides: this process's
    device (cuda:<local rank>, or cpu), and a `pref` of another kind is an error."""
    acc = distributed()
    if acc is not None:
        if pref not in ("", "auto") and torch.device(pref).type != acc.device.type:
            raise RuntimeError(
                f"device {pref!r} requested, but accelerate launched these processes on {acc.device.type}: "
                "set the device to auto (ACCELERATE_USE_CPU=1 makes a launch use the CPU)")
        return acc.device
    if pref in ("", "auto"):
        if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
            return torch.device("cpu")  # `accelerate launch --cpu` of a single process
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(pref)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {pref!r} requested but CUDA is not available")
    return dev


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A per-epoch seed derived from (seed, epoch), stable across processes."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(1)[0])


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)])


class Checkpointer:
    """`<folder>/<name>.pt` files written atomically (temp file + rename): a crash mid-save
    never leaves a truncated checkpoint behind."""

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)

    def path(self, name: str = "last") -> Path:
        return self.folder / f"{name}.pt"

    def has(self, name: str = "last") -> bool:
        return self.path(name).exists()

    def save(self, state: Mapping[str, Any], name: str = "last") -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(name)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(dict(state), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def load(self, name: str = "last", map_location: Any = "cpu") -> dict[str, Any] | None:
        """The saved dict, or None when there is no such checkpoint."""
        p = self.path(name)
        if not p.exists():
            return None
        return torch.load(p, map_location=map_location, weights_only=False)


class EarlyStopping:
    """Stop after `patience` evaluations without an improvement of more than min_delta."""

    def __init__(self, patience: int, mode: str = "max", min_delta: float = 0.0):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.patience, self.mode, self.min_delta = int(patience), mode, float(min_delta)
        self.best: float | None = None
        self.best_epoch = 0
        self.bad_evals = 0

    def step(self, value: float, epoch: int) -> bool:
        """Record one evaluation; True when it is a new best."""
        value = float(value)
        if self.best is None or (
            value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta
        ):
            self.best, self.best_epoch, self.bad_evals = value, int(epoch), 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_evals = state["best"], int(state["best_epoch"]), int(state["bad_evals"])


@dataclass
class FitResult:
    """What `fit_loop` did: per-epoch losses, evaluations, the best epoch and timings."""

    epochs_run: int = 0  # the last completed epoch (counting epochs before a resume)
    best_epoch: int = 0
    best_score: float | None = None
    stopped_early: bool = False
    resumed_from: int = 0  # the epoch the "last" checkpoint had completed; 0 = fresh start
    losses: list[float] = field(default_factory=list)  # mean train loss per epoch (index = epoch - 1)
    evals: list[dict[str, Any]] = field(default_factory=list)  # {"epoch", "score", **metrics}
    train_seconds: float = 0.0  # summed over the run and the runs it resumed
    eval_seconds: float = 0.0
    processes: int = 1  # data-parallel processes that trained (accelerate launch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def fit_loop(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_epoch: Callable[[int], float],
    evaluate: Callable[[int], float | Mapping[str, Any]],
    *,
    epochs: int,
    patience: int = 10,
    eval_every: int = 1,
    monitor: str = "ndcg@10",
    mode: str = "max",
    checkpointer: Checkpointer | None = None,
    resume: bool = False,
    seed: int = 0,
    scheduler: Any = None,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Train with early stopping; checkpoint every epoch; restore the best weights at the end.

    train_epoch(epoch) runs one epoch (epochs count from 1) and returns its mean loss.
    evaluate(epoch) returns the monitored value, or a flat metrics dict holding `monitor`.
    patience counts evaluations, not epochs (0 = never stop early). With resume=True and a
    "last" checkpoint in `checkpointer`, training continues after the epoch it recorded (a run
    that had already finished is not repeated: its best weights are loaded and returned).

    Several processes (`distributed()`): train_epoch should step through `loss_fn(model)` on
    `shard(...)` of the epoch's batches. Only the main process evaluates, checkpoints and logs;
    it broadcasts its verdict (new best? stop?) so all leave after the same epoch holding the
    same best weights, and the same FitResult is returned everywhere.
    """
    if epochs < 0 or eval_every < 1:
        raise ValueError(f"need epochs >= 0 and eval_every >= 1, got {epochs}, {eval_every}")
    acc = distributed()
    main = acc is None or acc.is_main_process
    rank = 0 if acc is None else acc.process_index
    stopper = EarlyStopping(patience, mode)
    result = FitResult(processes=1 if acc is None else acc.num_processes)
    best_state: dict[str, torch.Tensor] | None = None
    start = 0
    done = False
    if resume and checkpointer is not None and checkpointer.has("last"):
        st = checkpointer.load("last")
        model.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        if scheduler is not None and st.get("scheduler") is not None:
            scheduler.load_state_dict(st["scheduler"])
        stopper.load_state_dict(st["stopper"])
        result = FitResult(**{**st["result"], "processes": result.processes})
        start = result.resumed_from = int(st["epoch"])
        done = bool(st.get("done"))
        best = checkpointer.load("best")
        best_state = best["model"] if best is not None else None
        if log and main:
            log(f"resumed from {checkpointer.path('last')} after epoch {start}")

    for epoch in range(start + 1, epochs + 1):
        if done:
            break
        # + rank: each process draws its own dropout / negatives (rank 0 = the single-process seed)
        torch.manual_seed(epoch_seed(seed, epoch) + rank)
        model.train()
        t0 = time.perf_counter()
        loss = float(train_epoch(epoch))
        if acc is not None:  # each process saw its shard: log the mean over all of them
            loss = float(acc.reduce(torch.tensor(loss, device=acc.device), reduction="mean"))
        result.train_seconds += time.perf_counter() - t0
        result.losses.append(loss)
        result.epochs_run = epoch
        msg = f"epoch {epoch:4d}  loss {loss:.4f}"
        improved = False
        if main and (epoch % eval_every == 0 or epoch == epochs):
            model.eval()
            t0 = time.perf_counter()
            with torch.no_grad():
                got = evaluate(epoch)
            result.eval_seconds += time.perf_counter() - t0
            metrics = dict(got) if isinstance(got, Mapping) else {monitor: float(got)}
            if monitor not in metrics:
                raise KeyError(f"evaluate() returned no {monitor!r} (keys: {sorted(metrics)})")
            score = float(metrics[monitor])
            result.evals.append({"epoch": epoch, "score": score, **metrics})
            improved = stopper.step(score, epoch)
            result.best_epoch, result.best_score = stopper.best_epoch, stopper.best
            msg += f"  {monitor} {score:.4f}  (best {stopper.best:.4f} @ {stopper.best_epoch})"
        done = stopper.should_stop
        if acc is not None:  # the others did not evaluate: they follow the main process's verdict
            improved, done = broadcast_object_list([improved, done], from_process=0)
        if improved:  # DDP keeps the weights equal everywhere, so every process keeps the same best
            best_state = _cpu_state(model)
            if checkpointer is not None and main:
                checkpointer.save({"model": best_state, "epoch": stopper.best_epoch, "score": stopper.best}, "best")
        result.stopped_early = done and epoch < epochs
        if checkpointer is not None and main:
            checkpointer.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "epoch": epoch,
                    "stopper": stopper.state_dict(),
                    "result": copy.deepcopy(result.to_dict()),
                    "done": done,
                },
                "last",
            )
        if log and main:
            log(msg)
    if acc is not None:  # the main process's record (evaluations, best epoch) for everyone
        result = broadcast_object_list([result], from_process=0)[0]
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result
