"""Layer 3 — tools for the symmetries a model already has, as opposed to the ones DCS builds:
`removal` (``syre``: a random anchor for the decay removes them), `collapse` (``diagnose``: dead or
identical units, low effective rank), `noise` (``noise_collapse``: atoms SGD's noise will collapse), `charges` (``conserved``: their Noether charges)."""

from .charges import ConservationTracker, conserved
from .collapse import Diagnosis, LayerDiagnosis, PermutationThreshold, diagnose, effective_rank, permutation_threshold
from .noise import NoiseReport, NoiseWatch, collapse_exponents, noise_collapse, watch_noise
from .removal import syre

__all__ = ["ConservationTracker", "Diagnosis", "LayerDiagnosis", "NoiseReport", "collapse_exponents", "conserved",
           "diagnose", "effective_rank", "noise_collapse", "NoiseWatch", "watch_noise", "PermutationThreshold", "permutation_threshold", "syre"]
