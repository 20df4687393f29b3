"""Classification-time adaptation: use a run's unlabelled frames (and the K supports) to adapt.

Options (``FewShotClassifier(adapt=...)``, details in :mod:`speckle_embed.adaptation.state`):
``"batchnorm"`` (:mod:`.batchnorm`), ``"finetune"`` (:mod:`.finetune`), ``"prototypes"``
(:mod:`.prototypes`). Measured on held-out data by the leave-one-domain-out protocol
(``domains.adapt``, :mod:`speckle_embed.evaluation.domains`; ``scripts/evaluate_adaptation.py`` runs
it on any labelled files).
"""
from speckle_embed.adaptation.batchnorm import reestimate_batchnorm
from speckle_embed.adaptation.finetune import finetune_on_supports
from speckle_embed.adaptation.prototypes import prototype_distances, refine_prototypes
from speckle_embed.adaptation.state import (
                                            ADAPTATIONS,
                                            AdaptationState,
                                            adapt_embedder,
                                            adapt_prototypes,
                                            load_adaptation,
                                            parse_adapt,
                                            save_adaptation,
)

__all__ = ["ADAPTATIONS", "AdaptationState", "adapt_embedder", "adapt_prototypes", "parse_adapt",
           "save_adaptation", "load_adaptation", "reestimate_batchnorm", "finetune_on_supports",
           "refine_prototypes", "prototype_distances"]
