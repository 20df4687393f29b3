"""Real-detector effects (background, detector response, beam, layouts) as batched torch ops.

A core package (numpy/torch only) used by the simulator (:mod:`simulate`, realistic held-out
domains) and the training augmentation (:class:`speckle_embed.train.augment.SpeckleAugment`,
section ``realism``). Frames are photons ``(N, H, W)`` float32 with a bool bad-pixel mask
(``True`` = bad); randomness only from a passed :class:`torch.Generator`. Units, ranges and
sources of every effect: ``docs/realism.md``.
"""
from .background import BackgroundConfig, BackgroundParams, add_background, background_rate, sample_background
from .beam import BeamConfig, apply_beam, bandwidth_smear, bin_pixels, coherence_blur
from .detector_response import (DetectorParams, DetectorResponseConfig, adu_to_photons, common_mode_correct,
                                detector_round_trip, photons_to_adu, sample_detector, share_charge)
from .domain import RealismConfig, apply_beam_realism, apply_detector_realism
from .layouts import PRESETS, DetectorPreset, LayoutConfig, beamstop_mask, gap_mask, get_preset, random_layout

__all__ = [
    "BackgroundConfig", "BackgroundParams", "add_background", "background_rate", "sample_background",
    "BeamConfig", "apply_beam", "bandwidth_smear", "bin_pixels", "coherence_blur",
    "DetectorParams", "DetectorResponseConfig", "adu_to_photons", "common_mode_correct", "detector_round_trip",
    "photons_to_adu", "sample_detector", "share_charge",
    "RealismConfig", "apply_beam_realism", "apply_detector_realism",
    "PRESETS", "DetectorPreset", "LayoutConfig", "beamstop_mask", "gap_mask", "get_preset", "random_layout",
]
