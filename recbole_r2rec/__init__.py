"""recbole-r2rec: R2Rec (Reason-to-Recommend) as a RecBole plugin, under one fair protocol."""
from recbole_r2rec import compat

compat.apply()

from recbole_r2rec.runner import run  # noqa: E402

__all__ = ["run"]
__version__ = "0.1.0"
