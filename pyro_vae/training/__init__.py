"""The training side of each model kind: loss module, batches, validation, data checks, plots.

One :class:`TrainingPlan` per model kind (found by the model's class, see
:func:`plan_for`); the engine (:mod:`pyro_vae.train`) calls it and it calls the math.
No Lightning here.
"""

from .base import COMPILE_MODES, TrainingPlan, plan_for, register_plan  # noqa: F401
from .objectives import OBJECTIVES, make_elbo  # noqa: F401
from .batches import IndexBatchSampler, SemiSupervisedBatchSampler, step_bounds  # noqa: F401
from .vae import ELBOPlan  # noqa: F401
from .ssvae import LOSS_TERMS, SemiSupervisedPlan  # noqa: F401
from .m1m2 import M1M2Plan  # noqa: F401
from .cvae import CVAEPlan  # noqa: F401
from .hvae import HVAEPlan  # noqa: F401
