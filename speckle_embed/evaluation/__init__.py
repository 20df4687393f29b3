"""Evaluation: few-shot episodes and scoring, and the evaluation suite of ``speckle-embed evaluate``.

Modules (import them directly; only the episode API is re-exported here):

* episode sampling and scoring (SpeckleNN protocol) live in :mod:`speckle_embed.fewshot.episodes`
  (re-exported here; ``speckle_embed.evaluation.episodes`` names the same module);
* :mod:`~speckle_embed.evaluation.labelled` - labelled evaluation sets, photon noise at any fluence;
* :mod:`~speckle_embed.evaluation.offline` - 2-way K-shot, fluence scan, size table, t-SNE;
* :mod:`~speckle_embed.evaluation.online` - 3-way K-shot vs supervised heads, online fine-tuning;
* :mod:`~speckle_embed.evaluation.selection` - selection metrics of Assalauova et al. (PSD contrast);
* :mod:`~speckle_embed.evaluation.figures`, :mod:`~speckle_embed.evaluation.report` - figures, report;
* :mod:`~speckle_embed.evaluation.app` - the command (``conf/evaluate/evaluate.yaml``).
"""
from speckle_embed.fewshot.episodes import *  # noqa: F401,F403
from speckle_embed.fewshot.episodes import __all__  # noqa: F401
