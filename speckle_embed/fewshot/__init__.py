"""Few-shot classification: embeddings of a few labelled supports decide the class of queries.

One concept per module, re-exported here:

* :mod:`~speckle_embed.fewshot.index`: :class:`SupportIndex`, the labelled FAISS index of supports;
* :mod:`~speckle_embed.fewshot.rules`: the decision rules (``mean_distance``, ``prototype``, ``knn``);
* :mod:`~speckle_embed.fewshot.episodes`: N-way K-shot episodes and their scores (SpeckleNN protocol);
* :mod:`~speckle_embed.fewshot.classifier`: :class:`FewShotClassifier`, the estimator users call.
"""
from __future__ import annotations

from .classifier import ClassificationResult, ClassifierFileError, FewShotClassifier, NotFittedError
from .episodes import Episode, evaluate_episodes, evaluate_predictions, sample_episodes
from .index import SupportIndex
from .rules import RULES, get_rule

__all__ = ["FewShotClassifier", "ClassificationResult", "ClassifierFileError", "NotFittedError", "SupportIndex",
           "RULES", "get_rule", "Episode", "sample_episodes", "evaluate_episodes", "evaluate_predictions"]
