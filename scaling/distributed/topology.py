"""Parallel layout of a job: pure arithmetic, testable without a process group."""

from __future__ import annotations

from dataclasses import dataclass

from scaling.errors import ConfigError, Problem


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

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems, header="invalid parallel layout")

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
        if self.sequence_parallel > 1 and (self.tensor_parallel > 1 or self.pipeline_stages > 1):
            out.append(
                Problem(
                    "sequence_parallel",
                    "combines with data parallelism and ZeRO only, not with tensor or pipeline parallelism "
                    "(DeepSpeed's Ulysses groups span sequence x data ranks)",
                    self.sequence_parallel,
                )
            )
            return out
        model_parallel = self.tensor_parallel * self.pipeline_stages * self.sequence_parallel
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
                    fix="choose degrees whose product divides the number of processes",
                )
            )
        return out

    @property
    def _inner(self) -> int:
        """Size of the innermost (consecutive-rank) groups: tensor or sequence peers."""
        return self.tensor_parallel * self.sequence_parallel

    @property
    def data_parallel(self) -> int:
        return self.world_size // (self._inner * self.pipeline_stages)

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
