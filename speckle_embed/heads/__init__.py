"""Supervised comparison heads: CNN classifiers trained on labelled frames.

The few-shot :class:`~speckle_embed.classifier.FewShotClassifier` is compared with fully
supervised single-hit classifiers from the literature. They share its estimator surface, so an
evaluation treats every method alike::

    head = SupervisedHead(model={"name": "preact_resnet"}, recipe="maxf1").fit(X, y, val=(Xv, yv))
    head.predict(Xq), head.predict_proba(Xq), head.score(Xq, yq)
    head.save("heads/resnet"); head = SupervisedHead.load("heads/resnet")

    ens = EnsembleHead(n_folds=5, head={"recipe": "moresh"}).fit(X, y)   # 5-fold CV ensemble
    ens.predict_proba(Xq)                                                # softmax average + mirror TTA

* :class:`SupervisedHead`: one network (any model of :data:`~speckle_embed.models.MODEL_REGISTRY`
  that outputs logits: :class:`~speckle_embed.models.resnet.PreActResNetClassifier`,
  :class:`~speckle_embed.models.shi2019.Shi2019CNN`, ...) with the training recipe of
  Assalauova et al. (IUCrJ 9, 2022): Adam (lr 1e-4), batches of 64, "epochs" of 50 iterations,
  polynomial learning-rate decay ``lr * (1 - t/T)**0.9`` (``PolynomialLR``), random horizontal mirroring, and a
  class-sampling strategy (:data:`RECIPES`):

  ============  ========================================  =================================
  recipe        single hits per batch                     loss
  ============  ========================================  =================================
  ``"maxf1"``   2 % (maximises F1)                        cross-entropy
  ``"moresh"``  5 % ("more single hits": high recall)     cross-entropy weighted 0.1 / 0.9
  ``None``      frames drawn uniformly                    cross-entropy
  ============  ========================================  =================================

  The fraction is met in expectation: each batch holds ``floor(f * B)`` or ``ceil(f * B)``
  positives (stochastic rounding; 1.28 per batch of 64 on average for 2 %), drawn by cycling
  through a shuffled list of the positive frames, the rest likewise from the other frames
  (:class:`ClassFractionSampler`). Weighted cross-entropy is PyTorch's (the batch loss is the
  weighted mean, normalised by the sum of the weights of the batch's targets).

* **Binary mode** (``positive_class="single"``, the default): every class other than the
  positive one becomes ``"non-single"``; ``classes_ == ["non-single", "single"]``, column 1 of
  :meth:`~SupervisedHead.predict_proba` is P(single), and :meth:`~SupervisedHead.predict` says
  "single" where that probability is at least ``threshold`` (0.5 for the ResNet ensemble, 0.9
  for Shi et al. 2019). Labels may be hit-class codes (``1``) or names (``"single"``), see
  :data:`speckle_embed.data.h5dataset.HIT_CLASSES`. ``positive_class=None`` trains a
  multi-class head over the classes present (``classes_`` sorted, argmax decision).

* :class:`EnsembleHead`: stratified ``n_folds``-fold cross-validation (5 in the paper); the
  model of fold ``k`` trains on the other folds and selects its best epoch on fold ``k``. The
  ``n_folds`` models form the ensemble: probabilities are the mean of the members' softmax
  outputs, each averaged over the frame and its horizontal mirror (test-time augmentation);
  decision threshold 0.5. Out-of-fold probabilities are kept in ``oof_proba_``.

Models with a single logit ``z`` (Shi et al.'s sigmoid output) are read as two-class logits
``[0, z]``: softmax of those is ``[1 - sigmoid(z), sigmoid(z)]``.

Inputs: frames ``(N, H, W)`` in photons go through :func:`~speckle_embed.preprocess.preprocess`
to an ``S x S`` square (``preprocessing.input_size = S >= max(h, w)``), of which the central
``h x w`` window (the model's ``input_size``) is the patch the network sees; the ResNet's
192 x 96 patch is the central 192 x 96 window of a 192 x 192 square (:meth:`SupervisedHead.transform`).

Saved heads: one directory each (:mod:`speckle_embed.heads.io`); :func:`load_head` reads either
kind. :func:`head_from_config` builds a head from a config dict such
as ``conf/evaluate/heads/resnet_maxf1.yaml``.

The package, one concept per file (all names re-exported here):

================  =====================================================================
``supervised``    :class:`SupervisedHead`, :data:`RECIPES`
``ensemble``      :class:`EnsembleHead`
``sampling``      :class:`ClassFractionSampler`, :func:`stratified_folds`
``training``      the training loop (Adam, ``PolynomialLR``, mirroring, best-epoch selection)
``io``            the saved-head format (:data:`HEAD_FORMAT`, :class:`HeadFileError`)
``config``        :func:`head_from_config`, :func:`load_head`
================  =====================================================================

Both heads derive from :class:`speckle_embed.estimator.FrameClassifier` (scikit-learn's
``BaseEstimator`` + ``ClassifierMixin``: ``get_params``/``set_params``/``clone``, one ``score``,
one :class:`~speckle_embed.estimator.NotFittedError`).
"""
from __future__ import annotations

from speckle_embed.estimator import NotFittedError
from speckle_embed.heads.config import head_from_config, load_head
from speckle_embed.heads.ensemble import EnsembleHead
from speckle_embed.heads.io import HEAD_FORMAT, HeadFileError
from speckle_embed.heads.sampling import ClassFractionSampler, stratified_folds
from speckle_embed.heads.supervised import RECIPES, SupervisedHead
from speckle_embed.heads.training import poly_lr_lambda
from speckle_embed.models.shi2019 import SHI2019_THRESHOLD

__all__ = [
    "SupervisedHead",
    "EnsembleHead",
    "ClassFractionSampler",
    "RECIPES",
    "HEAD_FORMAT",
    "SHI2019_THRESHOLD",
    "HeadFileError",
    "NotFittedError",
    "stratified_folds",
    "poly_lr_lambda",
    "head_from_config",
    "load_head",
]
