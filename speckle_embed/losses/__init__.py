"""Metric-learning losses: squared-L2 distances, triplet miners, triplet loss."""
from .distances import pairwise_squared_l2
from .miners import (
    BaseTripletMiner,
    BatchAllMiner,
    BatchHardMiner,
    SemiHardMiner,
    valid_pair_masks,
)
from .triplet import TripletLoss

__all__ = [
    "pairwise_squared_l2",
    "valid_pair_masks",
    "BaseTripletMiner",
    "SemiHardMiner",
    "BatchHardMiner",
    "BatchAllMiner",
    "TripletLoss",
]
