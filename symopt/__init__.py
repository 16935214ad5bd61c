"""symopt — differentiable constrained optimisation in PyTorch by artificial mirror symmetries.

Each constraint reparametrises a tensor into factors so that the loss gains a mirror symmetry whose
fixed subspace is the constraint; coupled weight decay on the factors (``symopt.penalty`` or
``symopt.param_groups``) then drives the tensor onto it (Ziyin, ICML 2024, arXiv 2309.16932).
"""

from .attach import Handle, constrain, list_constraints
from .certify import Certificate, ConstraintCertificate, certify
from . import constraints  # noqa: F401 - symopt.constraints is the sub-package of kinds
from .constraints import (Auto, BudgetStrength, Constraint, Fixed, FixedZeros, GroupSparse, LowRank, NMSparse,
                          NonNegative, Scheduled, Sparse, Strength, Subspace, Tied)
from .decay import Binding, DecoupledDecayWarning, bind, check_optimizer, param_groups, penalty
from .finalize import finalize, landed
from .report import Report, report
from .verbs import (attention_blocks, attention_heads, feed_forward_units, fixed_zeros, group_sparse, low_rank, n_m_sparse,
                    nonnegative, sparse, subspace, tie)
from .symmetry import (ConservationTracker, Diagnosis, LayerDiagnosis, conserved, diagnose, effective_rank,
                       noise_collapse, permutation_threshold, syre, NoiseWatch, watch_noise)
from .distributed import sync_strengths
from .guard import Diverged, Guard, GuardEvent, guard
from .regrowth import Regrowth, regrow
from .export import ExportWarning, Footprint, SparseLinear, export, footprint
from .hub import from_pretrained, save_pretrained
from .problems import Problem
from .result import Result
from .solver import solve
from .paths import Path, path
from .comparison import compare

__version__ = "0.1.0"

__all__ = [
    "Certificate", "Constraint", "ConstraintCertificate", "DecoupledDecayWarning", "FixedZeros",
    "GroupSparse", "Handle", "LowRank", "Report", "Sparse", "Subspace", "Tied", "check_optimizer",
    "constrain", "list_constraints", "finalize", "landed", "fixed_zeros", "group_sparse", "low_rank", "param_groups",
    "penalty", "report", "sparse", "subspace", "syre", "tie", "diagnose", "Diagnosis", "LayerDiagnosis",
    "effective_rank", "conserved", "ConservationTracker", "export", "footprint", "sync_strengths", "Footprint", "ExportWarning",
    "SparseLinear", "guard", "Guard", "GuardEvent", "Diverged", "Problem", "Result", "solve", "compare", "certify",
    "NonNegative", "nonnegative", "bind", "Binding", "Strength", "Fixed", "Auto", "BudgetStrength", "Scheduled",
    "save_pretrained", "from_pretrained", "NMSparse", "n_m_sparse", "attention_blocks", "attention_heads",
    "feed_forward_units", "noise_collapse",
    "permutation_threshold", "path", "Path", "watch_noise", "NoiseWatch", "regrow", "Regrowth",
]
