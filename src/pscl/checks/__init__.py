"""Everything checked before training starts: config values, and the pretraining pool's images."""

from pscl.checks.config import CONFIG_RULES, check_batch_sizes, check_config
from pscl.checks.pool import check_pool

__all__ = ["CONFIG_RULES", "check_batch_sizes", "check_config", "check_pool"]
