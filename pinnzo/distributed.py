"""Scale-out on torch.distributed: one training run across processes, launched by torchrun.

Every rank holds theta and the same seeded generators, so every rank draws the
same points and the same random directions. A step's work is split one of two
ways (``--dist-split``):

- **points** (data parallel): each rank takes its contiguous shard of the step's
  points and evaluates every query of the step on it; the per-query loss sums
  (zeroth order: P scalars), the gradient (first order: d numbers) or the shard's
  J^T J and J^T r (Gauss-Newton: k^2 + k numbers) are summed with all_reduce.
- **queries** (direction parallel): each rank evaluates its share of the step's
  parameter vectors on all the points, and the values are all_gathered (CGE's
  coordinates and Gauss-Newton's Jacobian columns: many queries on few points).

Either way a run on N processes computes the numbers of a run on one, up to the
order of floating-point summation. Only rank 0 writes the run folder. The bytes
this rank hands to the process group are counted (``payload_bytes``).
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from typing import Iterable

import torch

from pinnzo.errors import PinnzoError

SPLITS = ("auto", "points", "queries")
BACKENDS = ("auto", "gloo", "nccl")


class WorkerLost(PinnzoError):
    """A collective failed or timed out: another worker died, hung or was killed."""


@dataclass
class World:
    """This process's place in the run: rank of size, the process-group backend, the split.

    A World of size 1 (the default) does no communication at all: the single-process
    path is unchanged.
    """

    rank: int = 0
    size: int = 1
    backend: str = "none"
    split: str = "points"
    timeout_s: float = 0.0
    payload_bytes: int = 0  # bytes this rank handed to collectives
    collectives: int = 0

    @property
    def writer(self) -> bool:
        """Only rank 0 writes the run folder and shows progress."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """Whether each rank evaluates a shard of the points (data parallel)."""
        return self.size > 1 and self.split == "points"

    def shard(self, count: int) -> slice:
        """This rank's contiguous part of ``count`` items (sizes differ by at most one)."""
        return self.shard_of(self.rank, count)

    def shard_of(self, rank: int, count: int) -> slice:
        """The contiguous part of ``count`` items that ``rank`` takes."""
        return slice(count * rank // self.size, count * (rank + 1) // self.size)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over the ranks (a new tensor; the input itself when alone)."""
        if self.size == 1:
            return tensor
        total = tensor.detach().clone().contiguous()
        self._collective(lambda: torch.distributed.all_reduce(total), total)
        return total

    def all_gather(self, tensor: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """The ranks' tensors (counts[r], ...) concatenated along the first axis, in rank order."""
        if self.size == 1:
            return tensor
        width = max(counts)
        padded = tensor.new_zeros((width, *tensor.shape[1:]))
        padded[:len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        self._collective(lambda: torch.distributed.all_gather(parts, padded.contiguous()), padded)
        return torch.cat([part[:count] for part, count in zip(parts, counts)])

    def tree_sum(self, parts: Iterable[torch.Tensor]) -> torch.Tensor:
        """The sum over the ranks of this rank's ``parts``, added pairwise in a fixed tree.

        With ROW_BLOCKS blocks of rows dealt to a power-of-two number of ranks, each rank holds a
        complete subtree, so the total is bit for bit the one process's sum of all the blocks.
        """
        local = _pairwise(parts)
        if self.size == 1:
            return local
        gathered = self.all_gather(local[None], [1] * self.size)
        return _pairwise(list(gathered))

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (every rank gets the same answer)."""
        if self.size == 1:
            return flag
        return bool(self.all_reduce(torch.tensor([int(flag)], dtype=torch.int32)).item())

    def broadcast_text(self, text: str) -> str:
        """Rank 0's ``text`` on every rank."""
        if self.size == 1:
            return text
        holder = [text]
        self._collective(lambda: torch.distributed.broadcast_object_list(holder, src=0), None,
                         len(text.encode()))
        return holder[0]

    def refuse_mismatch(self, description: str, what: str) -> None:
        """Refuse, on every rank, a run whose ranks were started with different ``description``s
        (the problem file and the settings)."""
        if self.size == 1:
            return
        digest = torch.tensor(list(hashlib.sha256(description.encode()).digest()), dtype=torch.int32)
        digests = self.all_gather(digest[None], [1] * self.size)
        differing = [rank for rank in range(self.size) if not torch.equal(digests[rank], digests[0])]
        if differing:
            raise PinnzoError(f"the ranks were started with different {what} (ranks {differing} differ from "
                              f"rank 0); start every rank with the same command")

    def settle(self, failure: BaseException | None) -> None:
        """Make one rank's start-up failure every rank's: re-raise it where it happened, and a
        PinnzoError naming the failing rank elsewhere."""
        if self.size == 1:
            if failure is not None:
                raise failure
            return
        failed = self.all_gather(torch.tensor([[int(failure is not None)]], dtype=torch.int32), [1] * self.size)
        if failure is not None:
            raise failure
        ranks = [rank for rank in range(self.size) if failed[rank, 0]]
        if ranks:
            raise PinnzoError(f"rank {ranks[0]} refused to start (its message says why); stopping")

    def _collective(self, call, tensor: torch.Tensor | None, size: int | None = None) -> None:
        self.collectives += 1
        self.payload_bytes += size if tensor is None else tensor.numel() * tensor.element_size()
        try:
            call()
        except (RuntimeError, ValueError) as error:  # gloo/nccl raise DistBackendError (a RuntimeError)
            first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            raise WorkerLost(f"rank {self.rank}: lost contact with another worker ({first}); stopping. The last "
                             f"checkpoint is kept: continue with --resume") from None

    def describe(self) -> dict:
        return {"world_size": self.size, "dist_backend": self.backend, "dist_split": self.split}


# Row blocks of a step's sums that must not depend on the number of processes (Gauss-Newton's J^T J):
# a power of two, so that 1, 2, 4, ... 16 processes give bit-identical sums (more: up to rounding).
ROW_BLOCKS = 16


def _pairwise(parts: Iterable[torch.Tensor]) -> torch.Tensor:
    """parts[0] + parts[1] + ... added pairwise: ((p0 + p1) + (p2 + p3)) + ..., level by level, a
    leftover part carried up to the next level. Streamed: each part is added in as it comes, so at
    most log2(count) + 1 of them are held (the large ones, Gauss-Newton's J^T J, are never all held).
    Each part must be the caller's own new tensor: sums are taken into it in place."""
    stack: list[tuple[int, torch.Tensor]] = []  # (level, the sum of 2^level consecutive parts)
    for part in parts:
        level = 0
        while stack and stack[-1][0] == level:
            part, level = stack.pop()[1].add_(part), level + 1
        stack.append((level, part))
    total = stack.pop()[1]
    while stack:  # the carried leftovers, from the smallest subtree up
        total = stack.pop()[1].add_(total)
    return total


def row_blocks(counts: tuple[int, ...], world: "World") -> list[list[slice]] | None:
    """This rank's blocks of the rows of a sharded residual vector: for each of its blocks, the
    slices of local rows it covers in every term (terms of ``counts`` rows in the whole step,
    concatenated). Block b takes rows [c * b / B, c * (b + 1) / B) of each term of c rows."""
    total = max(ROW_BLOCKS, 1 << (world.size - 1).bit_length())
    if total % world.size:
        return None  # blocks would straddle the ranks' shards: plain sums (equal up to rounding)
    mine = range(total * world.rank // world.size, total * (world.rank + 1) // world.size)
    blocks = [[] for _ in mine]
    offset = 0
    for count in counts:
        first = world.shard(count).start
        for k, b in enumerate(mine):
            blocks[k].append(slice(offset + count * b // total - first, offset + count * (b + 1) // total - first))
        offset += len(range(count)[world.shard(count)])
    return blocks


_CURRENT = World()


def current() -> World:
    """The World of this process (size 1 unless started by torchrun and ``init``)."""
    return _CURRENT


def launched() -> bool:
    """Whether this process was started by torchrun (or another torch.distributed launcher)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def restarted() -> bool:
    """Whether torchrun restarted this worker after a failure (--max-restarts)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def init(backend: str = "auto", split: str = "auto", timeout_s: float = 60.0, device: str = "cpu",
         auto_split: str = "points") -> World:
    """Join the process group torchrun describes in the environment (a World of size 1 when not
    launched by it); ``auto_split`` is the split ``auto`` means for this run."""
    global _CURRENT
    if backend not in BACKENDS:
        raise PinnzoError(f"--dist-backend: unknown value {backend!r}; must be one of {', '.join(BACKENDS)}")
    if split not in SPLITS:
        raise PinnzoError(f"--dist-split: unknown value {split!r}; must be one of {', '.join(SPLITS)}")
    if not timeout_s > 0:
        raise PinnzoError(f"--dist-timeout: expected a positive number of seconds; found {timeout_s}")
    if not launched() or int(os.environ["WORLD_SIZE"]) == 1:
        _CURRENT = World()
        return _CURRENT
    if backend == "auto":
        backend = "nccl" if device == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            torch.distributed.init_process_group(backend, store=_store(timeout_s), rank=int(os.environ["RANK"]),
                                                 world_size=int(os.environ["WORLD_SIZE"]),
                                                 timeout=datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as error:
            raise PinnzoError(f"cannot join the process group ({backend}): "
                              f"{str(error).strip().splitlines()[0][:200]}") from None
    _CURRENT = World(torch.distributed.get_rank(), torch.distributed.get_world_size(), backend,
                     auto_split if split == "auto" else split, timeout_s)
    return _CURRENT


def _store(timeout_s: float):
    """The rendezvous store torchrun describes (its agent's, or one hosted by rank 0), with keys
    prefixed by the restart count: workers restarted after a failure (--max-restarts) must not read
    the addresses the dead generation left there."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                       int(os.environ["WORLD_SIZE"]),
                                       is_master=not agent and int(os.environ["RANK"]) == 0,
                                       timeout=datetime.timedelta(seconds=timeout_s))
    return torch.distributed.PrefixStore(f"pinnzo/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def shutdown() -> None:
    """Leave the process group (at the end of a command)."""
    global _CURRENT
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _CURRENT = World()


COORDINATE_OPTIMIZERS = ("hybrid", "zo-cge")  # MNIST steps with hundreds of coordinate queries


def auto_split(optimizer: str, task: str = "pinn") -> str:
    """The split ``--dist-split auto`` picks: the queries for the MNIST coordinate optimizers (a
    step of hundreds of coordinate queries on one mini-batch), else the points.

    ``pinnzo bench distributed`` on 2 processes, 1 thread each (2-core CPU, quiet): hjb20
    ZO-signRGE 99% efficiency with the points split against 88% with the queries, zo-gn 85% / 63%,
    Adam (poisson2d) 53% / 50%; the MNIST hybrid 79% / 92%."""
    return "queries" if task == "mnist" and optimizer in COORDINATE_OPTIMIZERS else "points"
