"""forgetless strategies inside the trainers people already use (docs/integrations.md).

``ReplayTrainer`` is ``transformers.Trainer`` with replay; ``ReplayMixin`` puts the same on any Trainer
subclass (``class MySFT(ReplayMixin, trl.SFTTrainer)``). Importing this package imports transformers,
never TRL.
"""

from forgetless.integrations.trainer import ReplayMixin, ReplayTrainer

__all__ = ["ReplayMixin", "ReplayTrainer"]
