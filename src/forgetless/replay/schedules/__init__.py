"""Schedules decide *when* to replay and *how many* samples (docs/mssr.md, "Schedule x sampler").

A schedule gets the host strategy (``ReplayStrategy``: context, memory, RNG, budget of the current
task, memory strength when it asks for it) and answers, once per step, ``volume(i, step,
batch_size)``: how many samples to replay now (call ``i`` of the task; ``step`` the loop's global
step). The host caps the volume by the memory, lets the sampler pick the rows and counts them.
"""

from __future__ import annotations

from forgetless.replay.schedules.baselines import (
    AccuracyTriggeredSchedule,
    EveryStepSchedule,
    FixedSchedule,
    LossTriggeredSchedule,
)
from forgetless.replay.schedules.mssr import MSSRSchedule

# name -> factory(host)
SCHEDULES = {"every_step": EveryStepSchedule, "fixed": FixedSchedule, "loss_triggered": LossTriggeredSchedule,
             "accuracy_triggered": AccuracyTriggeredSchedule, "mssr": MSSRSchedule}
