"""Parallel layout of a job: pure arithmetic, testable without a process group."""

from __future__ import annotations

from dataclasses import InitVar, dataclass
from typing import Protocol

from scaling.errors import ConfigError, Problem

SEQUENCE_PARALLEL_RULE = (
    "combines with data parallelism and ZeRO only, not with tensor or pipeline parallelism "
    "(DeepSpeed's Ulysses groups span sequence x data ranks)"
)
"""Why a sequence-parallel degree > 1 refuses tensor and pipeline degrees > 1 (stated once, reported by
every check of a layout: run options, DeepSpeed JSON, checkpoint reshape)."""


class Degrees(Protocol):
    """Anything that names the four degrees (run values, an estimate's or a reshape's layout)."""

    @property
    def world_size(self) -> int: ...
    @property
    def tensor_parallel(self) -> int: ...
    @property
    def pipeline_stages(self) -> int: ...
    @property
    def sequence_parallel(self) -> int: ...


@dataclass(frozen=True)
class Topology:
    """How `world_size` processes split into data-, tensor-, sequence- and pipeline-parallel groups.

    The pipeline axis is outermost and the tensor axis innermost, as DeepSpeed's PipeModelDataParallelTopology
    lays them out: consecutive ranks form a tensor-parallel group, so they share a node when they can.
    Sequence-parallel groups are consecutive ranks too (DeepSpeed's Ulysses groups); they sit where the tensor
    axis would, and the two are not combined.
    """

    world_size: int
    """Total number of processes."""
    tensor_parallel: int = 1
    """Processes that split each layer's weights (AutoTP)."""
    pipeline_stages: int = 1
    """Processes that each hold a contiguous slice of the layers."""
    sequence_parallel: int = 1
    """Processes that each hold a slice of every sequence (Ulysses)."""
    check: InitVar[bool] = True
    """Raise ConfigError on an impossible layout. False describes any layout (data_parallel is then at least
    1) and leaves the verdict to `problems()`: for resolving and reporting, where every problem is listed."""

    @classmethod
    def unchecked(cls, degrees: Degrees) -> Topology:
        """The layout of `degrees`, whatever they are: the caller reports `problems()` where it lists them."""
        return cls(
            world_size=degrees.world_size,
            tensor_parallel=degrees.tensor_parallel,
            pipeline_stages=degrees.pipeline_stages,
            sequence_parallel=degrees.sequence_parallel,
            check=False,
        )

    def __post_init__(self, check: bool) -> None:
        problems = self.problems() if check else []
        if problems:
            raise ConfigError(problems, header="invalid parallel layout")

    @property
    def mixes_sequence_with_model_parallel(self) -> bool:
        """Sequence parallelism together with tensor or pipeline parallelism (see SEQUENCE_PARALLEL_RULE)."""
        return self.sequence_parallel > 1 and (self.tensor_parallel > 1 or self.pipeline_stages > 1)

    @property
    def model_parallel(self) -> int:
        """Ranks that together hold one replica of the model and see one share of the data."""
        return self.tensor_parallel * self.pipeline_stages * self.sequence_parallel

    def problems(self) -> list[Problem]:
        out = []
        for name, value in (
            ("world_size", self.world_size),
            ("tensor_parallel", self.tensor_parallel),
            ("pipeline_stages", self.pipeline_stages),
            ("sequence_parallel", self.sequence_parallel),
        ):
            if not isinstance(value, int) or value < 1:
                out.append(Problem(name, "must be a positive integer", value))
        if out:
            return out
        if self.mixes_sequence_with_model_parallel:
            out.append(Problem("sequence_parallel", SEQUENCE_PARALLEL_RULE, self.sequence_parallel))
            return out
        model_parallel = self.model_parallel
        if self.world_size % model_parallel:
            degrees = (
                f"sequence_parallel({self.sequence_parallel})"
                if self.sequence_parallel > 1
                else f"tensor_parallel({self.tensor_parallel}) * pipeline_stages({self.pipeline_stages})"
            )
            out.append(
                Problem(
                    "parallel",
                    f"{degrees} = {model_parallel} does not divide WORLD_SIZE({self.world_size})",
                    fix="the product of the degrees must divide the number of processes",
                )
            )
        return out

    @property
    def _inner(self) -> int:
        """Size of the innermost (consecutive-rank) groups: tensor or sequence peers."""
        return self.tensor_parallel * self.sequence_parallel

    @property
    def data_parallel(self) -> int:
        """Model replicas, each reading its own share of the data: world / (tp x pp x sp)."""
        return max(1, self.world_size // max(1, self.model_parallel))

    @property
    def zero_partition(self) -> int:
        """Ranks ZeRO partitions the model states over: the data-parallel ranks and their sequence peers
        (Ulysses ranks hold the whole model, so ZeRO shards across them too)."""
        return self.data_parallel * self.sequence_parallel

    def coordinates(self, rank: int) -> tuple[int, int, int]:
        """(pipeline stage, data-parallel rank, tensor- or sequence-parallel rank) of a global rank."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside world of {self.world_size}")
        inner_rank = rank % self._inner
        dp_rank = (rank // self._inner) % self.data_parallel
        stage = rank // (self._inner * self.data_parallel)
        return stage, dp_rank, inner_rank

    def data_rank(self, rank: int) -> int:
        """Which share of the data a rank reads: tensor and sequence peers and pipeline stages read the same."""
        return self.coordinates(rank)[1]

    def counts_data(self, rank: int) -> bool:
        """Whether a rank's batches count toward throughput: one rank per data-parallel share, so tokens that
        tensor or sequence peers (or later pipeline stages) also hold are counted once."""
        stage, _, inner_rank = self.coordinates(rank)
        return stage == 0 and inner_rank == 0

    def global_batch(self, micro_batch: int, grad_accum: int) -> int:
        """Samples per optimizer step: micro x accumulation x data-parallel size."""
        return micro_batch * grad_accum * self.data_parallel

    def describe(self) -> str:
        return (
            f"world {self.world_size} = dp {self.data_parallel} x tp {self.tensor_parallel}"
            f" x pp {self.pipeline_stages}"
            + (f" x sp {self.sequence_parallel}" if self.sequence_parallel > 1 else "")
        )
