"""Classical few-shot baselines without learning: is the embedding worth its keep on your data?

Each is a scikit-learn estimator on detector frames ``(N, H, W)`` (``fit(X, y, mask=None)``,
``predict``, ``predict_proba``, ``score``): hand-made features per frame, standardised on the
supports, then the nearest class mean (:class:`sklearn.neighbors.NearestCentroid`).

* :class:`RadialProfileClassifier` - log radial profile + per-ring azimuthal contrast;
* :class:`PhotonCountClassifier` - total photons and lit-pixel fraction.

:data:`BASELINES` maps the names used in reports to the classes.
"""
from speckle_embed.baselines.nearest_mean import NearestMeanBaseline
from speckle_embed.baselines.photon_count import (
           PhotonCountClassifier,
           photon_count_features,
)
from speckle_embed.baselines.radial_profile import (
           RadialProfileClassifier,
           radial_profile_features,
)

__all__ = ["NearestMeanBaseline", "RadialProfileClassifier", "PhotonCountClassifier",
           "radial_profile_features", "photon_count_features", "BASELINES"]

#: Report names of the baselines (evaluation tables, demo, README).
BASELINES = {"radial profile (no learning)": RadialProfileClassifier,
             "photon count (no learning)": PhotonCountClassifier}
