"""Direct preference optimisation (`--task dpo`) as an objective of the composed trainer.

A micro-batch holds b preference pairs as 2b rows (scaling.data.preference.dpo_batch): the chosen answers,
then the rejected ones. The policy (the model trained) and a frozen reference score every row; a row's
log-probability is the sum of its answer tokens' log-probabilities (the labels mask everything else). With

    r_chosen = beta * (log pi(chosen) - log ref(chosen)),   r_rejected likewise,

the sigmoid DPO loss (Rafailov et al. 2023) is -log sigmoid(r_chosen - r_rejected), averaged over the pairs.
Reward accuracy is the share of pairs with r_chosen > r_rejected, a tie counting one half: at the start,
where the policy is the reference, it is 0.5 and the loss log 2.

The reference is a small interface (`Reference`: logits without gradients) with two implementations:
- `FrozenCopy`: the initial policy built a second time (same source, same seed, so the same weights),
  frozen, and under ZeRO-3 partitioned in its own engine like the distillation teacher (scaling.engine.frozen);
- `AdaptersDisabled`: the policy itself with its LoRA adapters switched off (`--lora-r`, scaling.models.lora):
  the frozen base is exactly the initial policy and costs no memory.
`reference_for` takes the second when the policy carries LoRA adapters.

Dropout is switched off in the policy (as TRL does): with it, policy and reference would differ at the start
by the dropout mask alone, and the rewards would measure noise.

Layouts: the whole-sequence ones (data parallel with ZeRO 0-3, AutoTP). The pipeline (its loss is the
built-in language-modelling one) and Ulysses (sequence parallelism trains clm only) are refused before
launch (scaling.models.pipe).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F

from scaling.engine.objective import EvalTotals, ratio
from scaling.engine.shards import IGNORE, SequenceShard
from scaling.errors import UserError

if TYPE_CHECKING:
    from scaling.checkpoint.store import CheckpointRef
    from scaling.config.run import RunConfig

__all__ = [
    "AdaptersDisabled",
    "DpoObjective",
    "FrozenCopy",
    "Reference",
    "dpo_losses",
    "pair_sums",
    "reference_for",
    "sequence_logps",
]

FIGURES = ("loss", "reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy")
"""What a DPO step and evaluation report, per pair (eval: `eval_` + name; train: all but the loss)."""


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, the summed log-probability of its target tokens (labels other than -100, predicted from the
    position before), in fp32."""
    targets = labels[:, 1:]
    nll = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    )
    return -nll.view(targets.shape).sum(-1)


def dpo_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair: the sigmoid DPO loss, and the (detached) chosen and rejected rewards."""
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(chosen - rejected)
    return losses, chosen.detach(), rejected.detach()


def pair_sums(losses: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """[sum of each of FIGURES over the pairs..., number of pairs] (float64, on the losses' device)."""
    accuracy = (chosen > rejected).double() + 0.5 * (chosen == rejected).double()
    parts = [
        losses.detach().double(),
        chosen.double(),
        rejected.double(),
        (chosen - rejected).double(),
        accuracy,
    ]
    count = torch.tensor([float(losses.numel())], dtype=torch.float64, device=losses.device)
    return torch.cat([torch.stack([p.sum() for p in parts]), count])


# -- the reference ----------------------------------------------------------------------------------------


class Reference(Protocol):
    """The frozen model DPO measures the policy against."""

    def logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Its logits for the batch's inputs, without gradients."""


class FrozenCopy:
    """A second copy of the initial policy, frozen (its own ZeRO-3 engine under ZeRO-3)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    @classmethod
    def build(cls, run: RunConfig, tokenizer: Any, device: Any) -> FrozenCopy:
        from scaling.engine.frozen import build_frozen
        from scaling.models import build_model, describe_source

        def construct() -> Any:
            # The policy was built right after seeding with the run's seed: so is its copy (a randomly
            # initialised model, or new embedding rows, come out the same), without moving the run's RNG.
            devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(run.optim.seed)
                return build_model(
                    describe_source(run.model.source), task=run.model.task, tokenizer=tokenizer
                )

        return cls(build_frozen(run, construct, device))

    def logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return self.model(**inputs, use_cache=False).logits


class AdaptersDisabled:
    """The policy with its LoRA adapters switched off (scaling.models.lora): the frozen base, i.e. the
    initial policy, through the policy's own engine (under ZeRO-3 its partitions are gathered as always)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        from scaling.models.lora import adapters_disabled

        with torch.no_grad(), adapters_disabled(self.engine):
            return self.engine(**inputs, use_cache=False).logits


def reference_for(run: RunConfig, engine: Any, tokenizer: Any) -> Reference:
    """The policy without its adapters when it has LoRA adapters (free), else a frozen copy."""
    from scaling.models.lora import is_lora_model

    if is_lora_model(engine):
        return AdaptersDisabled(engine)
    return FrozenCopy.build(run, tokenizer, engine.device)


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off everywhere: nn.Dropout modules and the attention dropout rates models keep as floats."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            setattr(module, "attention_dropout", 0.0)  # noqa: B010 (a float attribute, not a submodule)


# -- the objective ----------------------------------------------------------------------------------------


class DpoObjective:
    """Sigmoid DPO against a frozen reference; logs rewards, margins and reward accuracy. Its state: the
    reward sums since the last log record (so a resume logs the same figures)."""

    pipeline_loss = False

    def __init__(self, run: RunConfig) -> None:
        self.run = run
        self.beta = run.dpo.beta
        self.reference: Reference | None = None
        self.tokenizer: Any = None
        self.device: Any = None
        self._window: torch.Tensor | None = None

    def build_model(self, run: RunConfig, tokenizer: Any) -> Any:
        from scaling.engine.build import make_model

        self.tokenizer = tokenizer
        model = make_model(run, tokenizer)
        disable_dropout(model)
        return model

    def attach(self, engine: Any) -> None:
        self.device = engine.device
        self.reference = reference_for(self.run, engine, self.tokenizer)

    # -- the loss -------------------------------------------------------------------------------------

    def pair_losses(
        self, model: Any, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per pair of the micro-batch: DPO loss, chosen reward, rejected reward."""
        assert self.reference is not None, "attach() builds the reference"
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        labels = batch["labels"]
        # The reference first: with adapters disabled it is the policy's own engine, and its forward must not
        # sit between the policy's forward and backward.
        reference = sequence_logps(self.reference.logits(inputs), labels)
        policy = sequence_logps(model(**inputs, use_cache=False).logits, labels)
        pairs = labels.shape[0] // 2
        return dpo_losses(policy[:pairs], policy[pairs:], reference[:pairs], reference[pairs:], self.beta)

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        losses, chosen, rejected = self.pair_losses(model, batch)
        sums = pair_sums(losses, chosen, rejected)
        self._window = sums if self._window is None else self._window + sums
        return losses.mean()

    def shard_loss(self, model: Any, shard: SequenceShard) -> torch.Tensor:
        raise UserError(
            "task dpo does not run sequence-parallel (its log-probabilities are per whole answer)"
        )

    # -- figures --------------------------------------------------------------------------------------

    def eval_totals(self, model: Any, batch: dict[str, torch.Tensor]) -> EvalTotals:
        sums = pair_sums(*self.pair_losses(model, batch)).tolist()
        return {name: (value, sums[-1]) for name, value in zip(FIGURES, sums, strict=False)}

    def shard_eval_totals(self, model: Any, shard: SequenceShard) -> EvalTotals:
        raise UserError(
            "task dpo does not run sequence-parallel (its log-probabilities are per whole answer)"
        )

    def metrics(self, totals: EvalTotals) -> dict[str, float]:
        return {f"eval_{name}": ratio(totals, name) for name in FIGURES}

    def train_metrics(self) -> dict[str, float]:
        """Rewards, margin and accuracy of the training pairs since the last call, over all ranks
        (collective)."""
        import torch.distributed as dist

        sums = self._window
        if sums is None:
            sums = torch.zeros(len(FIGURES) + 1, dtype=torch.float64, device=self.device)
        self._window = None
        if dist.is_initialized():
            sums = sums.clone()
            dist.all_reduce(sums)
        values = sums.tolist()
        count = max(values[-1], 1.0)
        return {name: value / count for name, value in zip(FIGURES, values, strict=False) if name != "loss"}

    # -- the rest of the contract ---------------------------------------------------------------------

    def after_step(self, engine: Any, lr: float) -> None:
        """Nothing is trained outside the engine."""

    def before_commit(self, ref: CheckpointRef, rank: int) -> None:
        """No files of its own: the reference is rebuilt from the run's source, never saved."""

    def state_dict(self) -> dict[str, Any]:
        return {"dpo_window": None if self._window is None else self._window.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("dpo_window")
        self._window = None if saved is None else torch.tensor(saved, dtype=torch.float64, device=self.device)
