"""Layer 4 — independent solvers to check DCS against, each ``f(problem) -> Result``:

- `cvxpy` — the convex twin with Clarabel (any cvxpy solver by name);
- `projected` — proximal / projected FISTA on the original variable;
- `geoopt` — rank bounds with Stiefel factors and RiemannianAdam;
- `sklearn` — scikit-learn's Lasso and L1 logistic regression, skglm's group lasso;
- `skglm` — skglm's Lasso, sparse logistic regression and group lasso;
- `softimpute` — accelerated SoftImpute with a warm-started randomized SVD, for matrix completion.

Optional imports: a missing package raises ``ImportError`` naming the extra (never at
``import symopt``); a solver with no method for a problem raises
`NotApplicable`.
"""

from ..result import NotApplicable
from .convex import solve_cvxpy
from .proximal import solve_proximal
from .riemannian import solve_geoopt
from .scikit import solve_skglm, solve_sklearn
from .softimpute import solve_softimpute

cvxpy = solve_cvxpy
projected = solve_proximal
geoopt = solve_geoopt
sklearn = solve_sklearn
skglm = solve_skglm
softimpute = solve_softimpute

__all__ = ["NotApplicable", "cvxpy", "geoopt", "projected", "sklearn", "solve_cvxpy", "solve_geoopt",
           "solve_proximal", "solve_skglm", "solve_sklearn", "solve_softimpute", "skglm", "softimpute"]
