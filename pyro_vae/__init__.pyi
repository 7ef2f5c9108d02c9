# The public API as type checkers and editors see it. At run time `pyro_vae/__init__.py` imports
# these names on first use (so `pyro-vae --help` does not wait for torch);
# tests/test_api.py checks that the two agree.
from os import PathLike
from typing import Any, Optional, Sequence, Union

from . import data as data
from . import evaluate as evaluate
from . import likelihoods as likelihoods
from . import models as models
from . import priors as priors
from . import scores as scores
from .config import Config as Config
from .config import load_config as load_config
from .data import DATASETS as DATASETS
from .data import Dataset as Dataset
from .data import Split as Split
from .data import load_data as load_data
from .errors import ConfigError as ConfigError
from .errors import DataError as DataError
from .errors import Interrupted as Interrupted
from .errors import PyroVAEError as PyroVAEError
from .evaluate import iwae_log_likelihood as iwae_log_likelihood
from .evaluate import test_metrics as test_metrics
from .likelihoods import LIKELIHOODS as LIKELIHOODS
from .models import CVAE as CVAE
from .models import HVAE as HVAE
from .models import MODELS as MODELS
from .models import SSVAE as SSVAE
from .models import VAE as VAE
from .models import Classifier as Classifier
from .models import LatentVariableModel as LatentVariableModel
from .priors import PRIORS as PRIORS
from .rundir import load as load
from .scores import ANOMALY_SCORES as ANOMALY_SCORES
from .train import FitResult as FitResult

__version__: str
__all__: list

def fit(
    x: Any = None,
    y: Any = None,
    *,
    config: Any = None,
    overrides: Sequence[str] = (),
    out: Optional[Union[str, PathLike]] = None,
    **kwargs: Any,
) -> Optional[FitResult]: ...
def save(model: LatentVariableModel, path: Union[str, PathLike], overwrite: bool = False) -> Any: ...
