"""Everything checked before training starts that is not data: config values, batch sizes and the
run folder. The images themselves are checked where they are read (:mod:`pscl.data.image_checks`)."""

from pscl.checks.config import CONFIG_RULES, check_batch_sizes, check_config

__all__ = ["CONFIG_RULES", "check_batch_sizes", "check_config"]
