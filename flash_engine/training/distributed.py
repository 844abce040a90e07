"""Training on several processes: torchrun's ranks, their process group, DDP.

``torchrun --nproc-per-node N -m flash_engine train …`` starts N copies of the command; each
learns its place from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK; MASTER_ADDR and
MASTER_PORT go to torch's ``env://`` rendezvous), read by ``ranks_from_environment`` and
nowhere else. A plain ``python -m flash_engine train`` (no WORLD_SIZE, or 1) is ``SOLO``:
no process group, no DDP, the trainer exactly as on one device.

A ``Team`` is what the trainer asks of the other ranks: wrap a module in
DistributedDataParallel, hold back the gradient sync while a rank accumulates its slots,
average a loss, agree on stopping, check that every rank sees the same run. Collectives run
under ``talking``: a rank that dies (kill -9, a lost machine) makes the survivors' next
collective fail (gloo at once; any backend at the process group's timeout), and that becomes
one ``RankLost`` line instead of a traceback or a hang.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
from dataclasses import dataclass

import torch

from flash_engine.errors import FlashError

# Longest a rank waits for the others at one collective: it covers the slowest rank's model
# load at the start and rank 0's checkpoint writes (the others wait at the next step's
# gradient sync). FLASH_DDP_TIMEOUT (seconds) changes it.
DEFAULT_TIMEOUT_S = 600
TIMEOUT_ENV = "FLASH_DDP_TIMEOUT"
RANK_LOST = "rank_lost"


@dataclass(frozen=True)
class Ranks:
    """This process's place in a run: rank ``rank`` of ``world_size``, GPU ``local_rank`` of its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def label(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


def ranks_from_environment(environ: dict | None = None) -> Ranks:
    """torchrun's variables (the only place that reads them); none: a plain, single process."""
    environ = os.environ if environ is None else environ

    def number(name: str, default: str | None = None) -> int:
        text = environ.get(name, default)
        if text is None or not str(text).strip().isdigit():
            raise FlashError(f"{name}={text!r} in the environment is not a whole number",
                             "start the ranks with torchrun --nproc-per-node N -m flash_engine train …",
                             code="bad_argument")
        return int(text)

    if environ.get("WORLD_SIZE") is None:
        return Ranks()
    world_size = number("WORLD_SIZE")
    if world_size <= 1:
        return Ranks()
    rank, local_rank = number("RANK"), number("LOCAL_RANK", environ.get("RANK"))
    if not 0 <= rank < world_size:
        raise FlashError(f"RANK={rank} is not below WORLD_SIZE={world_size}", "start the ranks with torchrun",
                         code="bad_argument")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(name)]
    if missing:
        raise FlashError(f"WORLD_SIZE={world_size} but {' and '.join(missing)} not set: the ranks cannot meet",
                         "start the ranks with torchrun, which sets them", code="bad_argument")
    timeout = environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        timeout_s = float(timeout)
    except ValueError:
        timeout_s = -1.0
    if not timeout_s > 0:
        raise FlashError(f"{TIMEOUT_ENV}={timeout!r} is not a positive number of seconds",
                         f"e.g. {TIMEOUT_ENV}={DEFAULT_TIMEOUT_S}", code="bad_argument")
    return Ranks(rank=rank, world_size=world_size, local_rank=local_rank, timeout_s=timeout_s)


def rank_device(ranks: Ranks, requested: str, cuda_count: int) -> torch.device:
    """The device of a rank of several: GPU LOCAL_RANK on CUDA (one GPU per rank), else the CPU."""
    if requested == "cpu" or (requested == "auto" and cuda_count == 0):
        return torch.device("cpu")
    if requested not in ("auto", "cuda"):
        raise FlashError(f"--device {requested} with {ranks.world_size} ranks: each rank takes its own device",
                         "pass --device cuda (rank N on GPU LOCAL_RANK) or --device cpu", code="bad_device")
    if cuda_count == 0:
        raise FlashError("CUDA was requested but no CUDA GPU is available",
                         "use --device cpu or install the CUDA build of torch", code="bad_device")
    if ranks.local_rank >= cuda_count:
        raise FlashError(f"{ranks.label()} is local rank {ranks.local_rank}, but this machine has "
                         f"{cuda_count} GPU(s)", f"use --nproc-per-node {cuda_count} or fewer", code="bad_device")
    return torch.device("cuda", ranks.local_rank)


class RankLost(FlashError):
    """A collective failed: a rank (or its machine, or the network) is gone. One line."""

    def __init__(self, ranks: Ranks, where: str, err: BaseException):
        super().__init__(f"{ranks.label()} stopped at {where}: it lost the other ranks ({short_reason(err)})",
                         "torchrun's report says which rank failed first", code=RANK_LOST)
        self.where = where


def short_reason(err: BaseException) -> str:
    """The first line of a backend's error without its source location and advice."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    line = re.sub(r"^\[[^\]]*\]\s*", "", line)  # "[…/gloo/transport/tcp/pair.cc:537] "
    line = line.split(". This is typically caused", 1)[0]
    return line[:160]


class Team:
    """The other ranks, as the trainer sees them. ``SOLO`` (this class itself) is a run of one:
    every method is the identity, no collective is ever made."""

    ranks = Ranks()
    device: torch.device | None = None  # None: the request's device

    @property
    def rank(self) -> int:
        return self.ranks.rank

    @property
    def world_size(self) -> int:
        return self.ranks.world_size

    @property
    def is_main(self) -> bool:
        return self.ranks.rank == 0

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def accumulating(self, model: torch.nn.Module, last: bool):
        """Around a slot's forward and backward: no gradient sync until this rank's last slot."""
        return contextlib.nullcontext()

    def average(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def any(self, flag: bool) -> bool:
        return bool(flag)

    def check_same(self, description: str) -> None:
        pass

    def talking(self, where: str):
        return contextlib.nullcontext()

    def close(self) -> None:
        pass


SOLO = Team()


class ProcessGroupTeam(Team):
    """Rank ``ranks.rank`` of a torch.distributed process group: gloo on the CPU, NCCL on CUDA,
    with a gloo side group for the small host-side messages (stop flags, run checks)."""

    def __init__(self, ranks: Ranks, device: torch.device):
        import torch.distributed as dist

        self.ranks, self.device, self._dist = ranks, device, dist
        timeout = datetime.timedelta(seconds=ranks.timeout_s)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        with self.talking("the start (meeting the other ranks)"):
            dist.init_process_group(backend, init_method="env://", rank=ranks.rank, world_size=ranks.world_size,
                                    timeout=timeout)
            self._host_group = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        # device_ids None: DDP leaves the inputs where they are (the decoder's frame choice stays on
        # the host); the buffers are constants (positional tables): no broadcast before each forward.
        return DistributedDataParallel(module, device_ids=None, forward_sync_buffers=False)

    def accumulating(self, model: torch.nn.Module, last: bool):
        return contextlib.nullcontext() if last else model.no_sync()

    def average(self, value: torch.Tensor) -> torch.Tensor:
        value = value.clone()
        self._dist.all_reduce(value)  # NCCL queues it on the device: the host does not wait
        return value / self.world_size

    def any(self, flag: bool) -> bool:
        vote = torch.tensor([int(bool(flag))])
        self._dist.all_reduce(vote, op=self._dist.ReduceOp.MAX, group=self._host_group)
        return bool(vote.item())

    def check_same(self, description: str) -> None:
        """Every rank must train the same run: same clips, settings and checkpoint."""
        digest = torch.tensor(list(hashlib.sha256(description.encode()).digest()), dtype=torch.uint8)
        gathered = [torch.empty_like(digest) for _ in range(self.world_size)]
        self._dist.all_gather(gathered, digest, group=self._host_group)
        differ = [rank for rank, other in enumerate(gathered) if not torch.equal(other, gathered[0])]
        if differ:
            raise FlashError(f"rank {differ[0]} of {self.world_size} sees another run than rank 0 "
                             "(other clips, settings or checkpoint)",
                             "start every rank with the same command, with the clips and the --out folder "
                             "on a file system every machine sees at the same path", code="bad_argument")

    @contextlib.contextmanager
    def talking(self, where: str):
        try:
            yield
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as err:  # gloo and NCCL report a lost peer or a timeout as RuntimeError
            raise RankLost(self.ranks, where, err) from err

    def close(self) -> None:
        """Leave the group (also after a lost rank: the process then ends at once, without torchrun's SIGTERM)."""
        if self._dist.is_initialized():
            with contextlib.suppress(Exception):
                self._dist.destroy_process_group()


def join(ranks: Ranks, requested_device: str) -> Team:
    """SOLO for a single process; otherwise meet the other ranks (blocks until all have come)."""
    if not ranks.distributed:
        return SOLO
    device = rank_device(ranks, requested_device, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    return ProcessGroupTeam(ranks, device)
