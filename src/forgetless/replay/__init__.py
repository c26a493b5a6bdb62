"""Replay strategies. Importing this package registers every strategy in ``REGISTRY``."""

from forgetless.replay.base import (  # noqa: F401
    REGISTRY,
    BaseStrategy,
    ReplayBatch,
    Strategy,
    StrategyContext,
    WorkCounters,
    register,
)
