"""Layer 3 — certificates: per constraint, how far a tensor is from its set, how far from optimal
(the KKT residual), and whether λ exceeds the Lagrange multipliers (exactness). [`certify`][symopt.certify]
measures a model or a solver result; [`symopt.finalize`][symopt.finalize] records what snapping changed."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._format import table
from .attach import list_constraints
from .optimality import gradient_scale, loss_gradient


@dataclass(frozen=True)
class ConstraintCertificate:
    r"""One constraint's record in a [`Certificate`][symopt.Certificate].

    Attributes:
        name: the dotted name(s) of the constrained tensor(s).
        kind: the constraint kind.
        strength: λ when measured.
        violation_before: Euclidean distance of the tensor(s) to the constraint set (sparsity /
            rank kinds: to the snap at ``tol``). [`certify`][symopt.certify] changes nothing, so there
            ``violation_after`` is the same number.
        violation_after: the distance after [`symopt.finalize`][symopt.finalize] snapped.
        change: $‖\mathrm{after} - \mathrm{before}‖$ of the tensor(s).
        relative_change: $\mathrm{change} / ‖\mathrm{before}‖$.
        structure: density / groups / rank / codimension, as text.
        kkt_residual: with a loss: the distance of $-∇ℓ$ to $λ∂‖·‖$ (penalty kinds), or the
            gradient projected onto the set (linear kinds). 0 at an optimum.
        multiplier: with a loss, linear kinds: $‖O^\top ∇ℓ‖_∞$, the size of the Lagrange multipliers.
        exact: with a loss, linear kinds: $λ > \mathrm{multiplier}$ (the condition for the penalty to hold
            the constraint exactly), or the constraint has landed (``total_steps``: its factors are held
            on the fixed subspace), *and* the constraint holds (violation ≤ ``tol``); never True for a
            violated constraint, whatever λ.
        relative_violation: $\mathrm{violation} / ‖\mathrm{tensor}‖$.
        budget: the atom budget (non-zeros, groups, rank) when one was set; the violation then
            includes the atoms beyond it.
        linear: the set is a linear subspace (the exact-penalty kinds).
        kkt_scale: what ``kkt_residual`` is measured against: $‖∇ℓ(0)‖$ for a solver result (the
            scale [`symopt.solve`][symopt.solve]'s ``tol`` uses), $‖∇ℓ(θ)‖$ for a model.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(3, 1, bias=False)
        >>> _ = symopt.fixed_zeros(lin, "weight", torch.tensor([[True, False, False]]), strength=1.0)
        >>> entry = symopt.certify(lin).entries[0]
        >>> entry.linear, entry.violation_before == abs(float(lin.weight[0, 0]))
        (True, True)
    """

    name: str
    kind: str
    strength: float
    violation_before: float
    violation_after: float
    change: float
    relative_change: float
    structure: str
    kkt_residual: float | None = None
    multiplier: float | None = None
    exact: bool | None = None
    relative_violation: float | None = None
    budget: int | None = None
    linear: bool = False
    kkt_scale: float | None = None

    @property
    def relative_kkt(self) -> float | None:
        """``kkt_residual / kkt_scale`` (None without a loss)."""
        if self.kkt_residual is None or self.kkt_scale is None:
            return None
        return self.kkt_residual / max(self.kkt_scale, 1e-300) if self.kkt_residual > 0 else 0.0


@dataclass(frozen=True)
class Certificate:
    r"""What [`certify`][symopt.certify] measured or [`symopt.finalize`][symopt.finalize] did: one record per constraint.

    Iterate it, index it by name (``certificate["0.weight"]``) or ``print`` it as a table.

    Attributes:
        entries: one [`ConstraintCertificate`][symopt.ConstraintCertificate] per constraint.
        tol: the tolerance used.
        extra: whole-problem numbers: ``loss_before`` / ``loss_after`` (finalize given a loss),
            ``objective``, ``dual_objective`` and ``duality_gap`` (a solver result of a problem
            with a dual).
        feasible: True when every ``violation_after ≤ tol`` (each constraint holds).
        optimal: with a loss (or for a solver result): True when every relative KKT residual
            (``kkt_residual / kkt_scale``) is ≤ ``tol``; None when no loss was given.
        ok: feasible, and optimal within ``tol`` wherever optimality was measured. An
            under-trained model certified with its loss is not ``ok`` however feasible it is; after
            [`symopt.finalize`][symopt.finalize] (no KKT measured) ``ok`` is ``feasible``.
        loss_change: loss after − loss before the snap, when a loss was given.
        duality_gap: primal minus dual objective, an upper bound on $\mathrm{objective} - \mathrm{optimum}$.

    Examples:
        >>> import symopt
        >>> from symopt.problems import make_lasso
        >>> certificate = symopt.certify(symopt.solve(make_lasso(n=40, d=20, nonzeros=3), tol=1e-9))
        >>> certificate.ok, 0 <= certificate.duality_gap < 1e-8
        (True, True)
    """

    entries: tuple[ConstraintCertificate, ...]
    tol: float
    extra: dict = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return all(e.violation_after <= self.tol for e in self.entries)

    @property
    def optimal(self) -> bool | None:
        measured = [e.relative_kkt for e in self.entries if e.relative_kkt is not None]
        if not measured:
            return None
        return all(r <= self.tol for r in measured)

    @property
    def ok(self) -> bool:
        return self.feasible and self.optimal is not False

    @property
    def loss_change(self) -> float | None:
        """Loss after − loss before the snap (``finalize`` given ``loss_fn``), else None."""
        if "loss_before" not in self.extra:
            return None
        return self.extra["loss_after"] - self.extra["loss_before"]

    @property
    def duality_gap(self) -> float | None:
        """Primal minus dual objective (an upper bound on the suboptimality), when known."""
        return self.extra.get("duality_gap")

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, name: str) -> ConstraintCertificate:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(f"no constraint named {name!r}; have {[e.name for e in self.entries]}")

    def __str__(self) -> str:
        headers = ["name", "kind", "strength", "violation before", "after", "change", "rel. change", "structure",
                   "KKT residual", "multiplier", "exact"]
        dash = lambda v: "-" if v is None else ("yes" if v is True else "NO" if v is False else v)  # noqa: E731
        rows = [
            [e.name, e.kind, e.strength, e.violation_before, e.violation_after, e.change, e.relative_change,
             e.structure, dash(e.kkt_residual), dash(e.multiplier), dash(e.exact)]
            for e in self.entries
        ]
        lines = [table(headers, rows)]
        if self.loss_change is not None:
            lines.append(f"loss {self.extra['loss_before']:.10g} -> {self.extra['loss_after']:.10g} "
                         f"(change {self.loss_change:+.3g})")
        if self.duality_gap is not None:
            lines.append(f"objective {self.extra['objective']:.12g}, dual {self.extra['dual_objective']:.12g}, "
                         f"duality gap {self.duality_gap:.3g}")
        return "\n".join(lines)


@contextmanager
def _quiet_estimates(constraints):
    """Gradients taken for a certificate must not feed adaptive strengths (``"auto"``, budgets,
    schedules): the policies of ``constraints`` ignore observations inside the block."""
    with ExitStack() as stack:
        for c in constraints:
            stack.enter_context(c.policy.paused())
        yield


def certify(model, loss_fn: Callable | None = None, batch=None, tol: float = 1e-6) -> Certificate:
    r"""Measure every constraint of ``model`` — or a solver's result — without changing anything.

    Per constraint: the distance to the set, and with a loss the KKT residual (0 exactly at a
    minimiser of $ℓ + λ‖·‖$: $-∇ℓ ∈ λ∂‖θ‖$) and, for the linear kinds, the multiplier
    $‖O^\top ∇ℓ‖_∞$ with ``exact``: $λ > \mathrm{multiplier}$ (the exact-penalty condition) and the violation
    within ``tol``. For a solver result
    of a penalised convex family it adds a Fenchel dual point and the duality gap, an upper bound on
    $\mathrm{objective} - \mathrm{optimum}$ that needs no reference solver. Parameters, ``.grad`` and the
    ``strength="auto"`` estimates are left as they are.

    Args:
        model: a model with symopt constraints, or a [`Result`][symopt.Result] from
            [`symopt.solve`][symopt.solve] or a baseline (then ``loss_fn`` / ``batch`` are not needed: the
            result's problem supplies the loss; the certificate adds ``objective``, and for the
            penalised convex families the dual objective and ``duality_gap`` of a dual-feasible
            point built from the result — see `symopt.problems.duality`).
        loss_fn: optional ``loss_fn(model)`` or ``loss_fn(model, batch)`` returning the scalar loss
            *without* the symopt penalty; with it the KKT residual and the multipliers are computed
            from $∂\mathrm{loss}/∂θ$ (no ``.grad`` is touched).
        batch: passed to ``loss_fn`` when given.
        tol: snap tolerance for the sparsity / rank kinds (entries, groups or σ ≤ tol count as 0).

    Returns:
        Certificate: one [`ConstraintCertificate`][symopt.ConstraintCertificate] per constraint (``violation_after`` equals
            ``violation_before``: nothing is changed); ``extra`` holds the objective and duality gap
            of a solver result.

    Raises:
        TypeError: ``model`` is neither an ``nn.Module`` nor a solver ``Result``.
        ValueError: a ``Result`` that carries no problem, or a budget result without its λ.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(3, 1, bias=False)
        >>> _ = symopt.fixed_zeros(lin, "weight", torch.tensor([[True, False, False]]), strength=1.0)
        >>> X, y = torch.randn(20, 3), torch.randn(20)
        >>> cert = symopt.certify(lin, lambda m: (m(X).squeeze(1) - y).square().mean())
        >>> entry = cert.entries[0]
        >>> entry.exact, entry.violation_before > 1e-6    # not trained yet: violated, so not exact
        (False, True)
    """
    if not isinstance(model, nn.Module):
        if hasattr(model, "x") and hasattr(model, "problem"):
            return _certify_result(model, tol)
        raise TypeError(f"certify: expected an nn.Module or a solver Result, got {type(model).__name__}")
    handles = list_constraints(model)
    grads: dict[int, list[torch.Tensor]] = {}
    if loss_fn is not None:
        with parametrize.cached(), _quiet_estimates([h.constraint for h in handles]):
            values = {id(h): h.values() for h in handles}
            loss = loss_fn(model) if batch is None else loss_fn(model, batch)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
                got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
                raise ValueError(f"certify: loss_fn must return a scalar tensor that depends on the model, got {got}"
                                 + ("" if not isinstance(loss, torch.Tensor) or loss.numel() != 1
                                    else " without grad (computed under torch.no_grad?)")
                                 + "; reduce it with .mean() or .sum()")
            loss = loss.reshape(())
            flat = [v for h in handles for v in values[id(h)]]
            found = torch.autograd.grad(loss, flat, allow_unused=True)
        it = iter(found)
        for h in handles:
            grads[id(h)] = [g if g is not None else torch.zeros_like(v) for v, g in zip(values[id(h)], it)]
    entries = []
    for h in handles:
        values = [v.detach() for v in h.values()]
        violation = h.violation(values, tol)
        norm = math.sqrt(sum(float(v.square().sum()) for v in values))
        kkt = multiplier = exact = scale = None
        if id(h) in grads:
            kkt = h.kkt_residual(values, grads[id(h)], tol)
            scale = math.sqrt(sum(float(g.square().sum()) for g in grads[id(h)]))
            if h.constraint.linear:
                multiplier = h.multiplier(grads[id(h)])
                # a landed constraint is held by its fixed subspace, not by λ (which is then 0)
                held = h.constraint.policy.has_landed() or h.strength > multiplier
                exact = held and violation <= tol
        entries.append(ConstraintCertificate(
            name=h.name, kind=h.kind, strength=h.strength, violation_before=violation, violation_after=violation,
            change=0.0, relative_change=0.0, structure=h.structure(values, tol), kkt_residual=kkt,
            multiplier=multiplier, exact=exact, relative_violation=violation / norm if norm > 0 else 0.0,
            budget=h.constraint.budget, linear=h.constraint.linear, kkt_scale=scale,
        ))
    return Certificate(tuple(entries), tol)


def _certify_result(result, tol: float) -> Certificate:
    """Certificate of a solver result: the problem's constraint at the result's λ, measured at ``x``."""
    problem = result.problem
    if problem is None:
        raise ValueError("certify: this Result carries no problem (results of symopt.solve and of "
                         "symopt.baselines do); certify the model instead")
    if getattr(problem, "budget", None) is not None:  # the penalised problem at the λ found
        if result.strength is None or result.strength <= 0:
            raise ValueError("certify: a budget result needs the λ it found (result.strength)")
        problem = problem.at_strength(result.strength)
    constraint = problem.constraint().to(dtype=torch.float64)
    data = problem.data_on("cpu", torch.float64)
    x = result.x.detach().to("cpu", torch.float64)
    with _quiet_estimates([constraint]):
        grad = loss_gradient(lambda point: problem.loss(point, **data), x)
    if constraint.auto and result.strength:  # the λ the solver ended with (margin × its multiplier estimate)
        constraint.strength = result.strength
    several = constraint.multi_tensor  # x stacks the tensors (a tie's copies)
    value = list(x.unbind(0)) if several else x
    g = list(grad.unbind(0)) if several else grad
    violation = constraint.violation(value, tol)
    norm = float(x.norm())
    multiplier = float(constraint.dual_norm(g)) if constraint.linear else None
    entry = ConstraintCertificate(
        name=problem.name, kind=constraint.kind, strength=constraint.strength, violation_before=violation,
        violation_after=violation, change=0.0, relative_change=0.0, structure=constraint.structure(value, tol),
        kkt_residual=constraint.kkt_residual(value, g, tol), multiplier=multiplier,
        exact=None if multiplier is None else (constraint.strength > multiplier and violation <= tol),
        relative_violation=violation / norm if norm > 0 else 0.0, budget=result.problem.budget,
        linear=constraint.linear, kkt_scale=gradient_scale(lambda point: problem.loss(point, **data),
                                                           tuple(problem.shape), "cpu", torch.float64),
    )
    extra = {"objective": problem.value(x, data, constraint), "solver": result.solver}
    if problem.dual is not None:
        dual_value, nu = problem.dual(x, data, constraint)
        extra.update(dual_objective=dual_value, duality_gap=extra["objective"] - dual_value, dual_point=nu)
    return Certificate((entry,), tol, extra)
