"""The dense linear probe: how good is a (pretrained) network's representation, apart from fine-tuning?

The network is frozen; a per-pixel linear classifier is fitted on its feature maps over the
round's annotated image(s) and scored on an evaluation split with the fine-tuner's metrics.

* :mod:`pscl.probe.features` - the per-pixel feature maps a probe reads;
* :mod:`pscl.probe.linear` - fitting and applying the linear classifier (pure tensor functions);
* :mod:`pscl.probe.evaluate` - one probe of a backbone on a data module, and the random-init floor.

The online version, logged to TensorBoard during pretraining, is
:class:`pscl.training.online_probe.OnlineProbe`.
"""

from pscl.probe.evaluate import ProbeSettings, probe_backbone, random_init_probe, settings_from_config
from pscl.probe.features import FEATURE_CHOICES, dense_features
from pscl.probe.linear import LinearProbe, fit_linear_probe, sample_pixels

__all__ = ["FEATURE_CHOICES", "LinearProbe", "ProbeSettings", "dense_features", "fit_linear_probe",
           "probe_backbone", "random_init_probe", "sample_pixels", "settings_from_config"]
