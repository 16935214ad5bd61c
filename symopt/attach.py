"""Layer 2 — glue between constraint kinds and ``torch.nn.utils.parametrize``.

Registers a constraint on a (possibly dotted) parameter name after validating everything first,
finds what is registered in a model ([`list_constraints`][symopt.list_constraints]), and installs a load-state hook so a plain,
unconstrained checkpoint loads into a constrained model (``weight`` → factors).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules import module as torch_module
from torch.nn.utils import parametrize

from .constraints import KINDS, Constraint
from .constraints.auto import watch_gradient
from .constraints.base import chain_original, require_floating

_FACTOR_FLAG = "_symopt_factor"
_HOOK_FLAG = "_symopt_load_hook"


@dataclass(frozen=True)
class Member:
    """One constrained tensor: ``module.<tensor>``, reachable as ``qualname`` from the model."""

    qualname: str
    module: nn.Module
    tensor: str

    def __repr__(self) -> str:
        return f"Member({self.qualname!r})"

    @property
    def parametrization(self) -> Constraint:
        return self.module.parametrizations[self.tensor][0]

    @property
    def factors(self) -> tuple[Tensor, ...]:
        return tuple(factors_of(self.module.parametrizations[self.tensor]))

    @property
    def value(self) -> Tensor:
        return getattr(self.module, self.tensor)


@dataclass(frozen=True)
class Handle:
    """One registered constraint, as returned by the verbs and by [`list_constraints`][symopt.list_constraints].

    A handle is a view: it holds no tensors of its own, so it stays valid through training,
    ``state_dict`` loads and ``strength`` changes (until [`symopt.finalize`][symopt.finalize] removes the
    constraint). The methods take the list of member values, so a tie and a single tensor read alike.

    Attributes:
        constraint: the [`Constraint`][symopt.Constraint] (the parametrization module; the same object
            for every member of a tie).
        members: the constrained tensors: one, or one per tied tensor. ``member.value`` is the
            current tensor, ``member.factors`` its factors (``original0``, ``original1``, ...).
        name: the dotted names, comma-separated for a tie.
        kind: ``"sparse"``, ``"group_sparse"``, ``"low_rank"``, ``"subspace"``, ``"fixed_zeros"``
            or ``"tied"``.
        strength: the current λ (with ``"auto"`` or a budget, the adapted value).

    Examples:
        >>> import torch, symopt
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
        >>> handle = symopt.tie(net, ["0.weight", "1.weight"], strength=1.0)
        >>> [m.qualname for m in handle.members], handle.violation(handle.values()) > 0
        (['0.weight', '1.weight'], True)
    """

    constraint: Constraint
    members: tuple[Member, ...]

    def __repr__(self) -> str:
        return f"Handle({self.kind} on {self.name}, strength={self.strength:g})"

    @property
    def name(self) -> str:
        return ", ".join(m.qualname for m in self.members)

    @property
    def kind(self) -> str:
        return self.constraint.kind

    @property
    def strength(self) -> float:
        return self.constraint.strength

    def values(self) -> list[Tensor]:
        """The members' current tensors."""
        return [m.value for m in self.members]

    def decayed_factors(self) -> list[Tensor]:
        """The factors that carry the decay (a tie's anchor and a subspace's free part do not)."""
        return [m.factors[i] for m in self.members for i in m.parametrization.decayed]

    # The maths of a tie acts on all members' values at once, that of the other kinds on one tensor:
    # the methods below take the list of values (and gradients) either way.
    def target(self, tensors: list[Tensor]):
        """What the constraint's maths takes from one list per member: the list itself for a
        constraint over several tensors (a tie, a channel group), else its one tensor."""
        return tensors if self.constraint.multi_tensor else tensors[0]

    def _call(self, method: str, values: list[Tensor], tol: float):
        return getattr(self.constraint, method)(self.target(values), tol)

    def violation(self, values: list[Tensor], tol: float = 0.0) -> float:
        """Distance of ``values`` to the constraint set (to the snap at ``tol`` for penalty kinds);
        NaN when a value holds NaN or Inf (an SVD would raise on it: reports must not)."""
        if not _finite(values):
            return float("nan")
        return self._call("violation", values, tol)

    def snap(self, values: list[Tensor], tol: float = 0.0) -> list[Tensor]:
        """``values`` projected onto the constraint set (small entries / groups / σ zeroed, and a
        budget's smallest atoms)."""
        out = self._call("snap", values, tol)
        if not self.constraint.multi_tensor:
            return [out]
        return list(out) if isinstance(out, (list, tuple)) else list(out.unbind(0))

    def structure(self, values: list[Tensor], tol: float = 0.0) -> str:
        """One-line description of the structure at ``tol`` (density, groups, rank, zeros, copies)."""
        if not _finite(values):
            return "non-finite (NaN/Inf)"
        return self._call("structure", values, tol)

    def kkt_residual(self, values: list[Tensor], grads: list[Tensor], tol: float = 0.0) -> float:
        """KKT residual at ``values`` given the loss gradients ``grads`` (see ``Constraint.kkt_residual``)."""
        if not (_finite(values) and _finite(grads)):
            return float("nan")
        return self.constraint.kkt_residual(self.target(values), self.target(grads), tol)

    def multiplier(self, grads: list[Tensor]) -> float:
        """Dual norm of the loss gradients on the constrained directions (the multipliers' size)."""
        if not _finite(grads):
            return float("nan")
        return float(self.constraint.dual_norm(self.target(grads)))

    def penalty(self) -> Tensor:
        r"""This constraint's decay $(λ/2)·\sum ‖\mathrm{factor}‖^2$ (differentiable)."""
        return sum(m.parametrization.penalty(*m.factors) for m in self.members)


def _finite(tensors: list[Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


# -- resolving names ---------------------------------------------------------------------------
def resolve(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """``model``, ``"a.b.weight"`` → ``(model.a.b, "weight")`` with a clear error on typos."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    if not isinstance(name, str) or not name:
        raise TypeError(f"parameter name must be a non-empty string like 'weight', got {name!r}")
    *path, leaf = name.split(".")
    module = model
    for i, part in enumerate(path):
        child = module._modules.get(part)
        if child is None:
            where = ".".join(path[:i]) or type(model).__name__
            raise ValueError(
                f"'{name}': {where} has no submodule '{part}'; submodules: {sorted(module._modules)}"
            )
        module = child
    return module, leaf


def _check_target(module: nn.Module, leaf: str, qualname: str) -> Tensor:
    """Everything that must hold before a tensor can be constrained; returns the tensor."""
    if parametrize.is_parametrized(module, leaf):
        existing = [type(p).__name__ for p in module.parametrizations[leaf]]
        raise ValueError(
            f"'{qualname}' is already constrained ({', '.join(existing)}); one constraint per tensor — "
            "finalize or remove the existing one first, or combine the structure into one constraint"
        )
    if leaf in module._buffers:
        raise ValueError(
            f"'{qualname}' is a buffer, not a parameter; symopt constrains trainable parameters: "
            "register it with nn.Parameter"
        )
    tensor = module._parameters.get(leaf)
    if tensor is None:
        params = sorted(n for n, p in module._parameters.items() if p is not None)
        raise ValueError(
            f"'{qualname}': {type(module).__name__} has no parameter '{leaf}'; its parameters: {params}"
        )
    require_floating(tensor, qualname)
    if tensor.device.type == "meta":
        raise ValueError(f"'{qualname}' is on the meta device: it has no values to factorise; materialise the "
                         "module first (module.to_empty(device=...) and initialise it), then constrain it")
    if tensor.numel() == 0:
        raise ValueError(f"'{qualname}' is empty (shape {tuple(tensor.shape)}): there is nothing to constrain")
    bad = int((~torch.isfinite(tensor.detach())).sum())
    if bad:
        raise ValueError(f"'{qualname}' holds {bad} NaN / Inf entries of {tensor.numel()}: a factorisation would "
                         "spread them (a whole group or every entry); fix or re-initialise the value first")
    return tensor


def _check_not_shared(model: nn.Module, module: nn.Module, leaf: str, qualname: str) -> None:
    """Refuse a parameter that another module of ``model`` holds too (``b.weight = a.weight``):
    parametrizing it in one module would leave the other reading the old, now untrained tensor."""
    tensor = module._parameters[leaf]
    others = [f"{name}.{key}" if name else key
              for name, other in model.named_modules(remove_duplicate=False)
              for key, p in other._parameters.items()
              if p is tensor and not (other is module and key == leaf)]
    if others:
        raise ValueError(
            f"'{qualname}' is shared with {', '.join(repr(o) for o in others)} (the same Parameter object): "
            "constraining it in one module would silently untie the other. Either keep one owner (make the "
            "other module read it, e.g. F.linear(x, owner.weight)), or untie them "
            "(b.weight = nn.Parameter(a.weight.detach().clone())) and keep them equal with symopt.tie"
        )


def _check_fresh(constraint: Constraint) -> None:
    if not isinstance(constraint, Constraint):
        raise TypeError(
            f"expected a symopt constraint ({', '.join(sorted(c.__name__ for c in KINDS.values()))}), "
            f"got {type(constraint).__name__}"
        )
    if constraint.attached_to is not None:
        raise ValueError(
            f"this {type(constraint).__name__} object is already attached to '{constraint.attached_to}'; "
            "create a new one for each tensor"
        )


# -- registration ------------------------------------------------------------------------------
def constrain(model: nn.Module, name: str | Sequence[str], constraint: Constraint) -> Handle:
    r"""Constrain ``model.<name>`` with ``constraint`` (the object form of every verb).

    The tensor $θ$ is registered as ``torch.nn.utils.parametrize`` parametrization: the module
    now stores the constraint's factors and recomputes $θ = \mathrm{constraint}(\mathrm{factors})$ on access. The
    factors are initialised by ``constraint.right_inverse(θ)``, so $θ$ keeps its value (up to
    rounding; a low-rank bound below θ's rank truncates, with a warning).

    Args:
        model: the module that owns the parameter, or an ancestor of it.
        name: a (dotted) parameter name; for [`Tied`][symopt.Tied], the list of names to tie.
        constraint: a fresh constraint object (one per tensor; a tie's object covers its group).

    Returns:
        Handle: the registered constraint. The parameter object is replaced by the factors, so
            build the optimizer afterwards.

    Raises:
        TypeError: ``constraint`` is not a symopt constraint, ``model`` is not an ``nn.Module``,
            or the parameter is not floating point.
        ValueError: no such parameter, a parameter already constrained, a constraint object
            already attached elsewhere, or an option that does not fit the tensor (shape of a
            mask / matrix, budget larger than the tensor, ...). Everything is validated before
            anything changes.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(4, 2)
        >>> symopt.constrain(lin, "weight", symopt.Sparse(strength=1e-3)).name
        'weight'
    """
    _check_fresh(constraint)
    guard_save_pretrained(model)
    if constraint.multi_tensor:
        if isinstance(name, str):
            raise TypeError(f"{type(constraint).__name__} acts on several tensors: pass the list of parameter "
                            "names, e.g. ['enc.weight', 'dec.weight']")
        return _constrain_several(model, list(name), constraint)
    if not isinstance(name, str):
        raise TypeError(f"{type(constraint).__name__} acts on one parameter: pass its name as a string")
    module, leaf = resolve(model, name)
    tensor = _check_target(module, leaf, name)
    _check_not_shared(model, module, leaf, name)
    constraint.validate(tensor, name)
    constraint.to(device=tensor.device, dtype=tensor.dtype)
    _register(module, leaf, constraint, name)
    return Handle(constraint, (Member(name, module, leaf),))


class _SavePretrainedGuard:
    """Stands in for a Hugging Face model's ``save_pretrained`` while saving it plainly would lose something.

    With constraints registered, the model's ``state_dict`` holds the factors (``…parametrizations.weight.
    original0``), which ``from_pretrained`` does not know: it would re-initialise every constrained weight and
    say so only in a load report. So the state written (the ``state_dict`` given, as ``transformers.Trainer``
    gives its checkpoints', else the model's) gains each constrained weight's current value under its own name
    (`with_plain_values`): ``from_pretrained`` loads the values exactly (and lists the factors' keys as unused),
    while the constrained model's own ``load_state_dict`` restores the factors and the constraints' state
    exactly (`_load_plain_checkpoint` then sets the values aside): ``Trainer(resume_from_checkpoint=...)``
    resumes the training it interrupted. Once no constraint is left it is the model's own
    ``save_pretrained`` again. Layers above add refusals (`guard_save_pretrained`: a compressed export whose
    layers its config does not describe). It is set on the instance only (never on the class), and a
    deepcopy carries it to the copy's model.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.refusals: list[Callable[[nn.Module], str | None]] = []

    def __call__(self, *args, **kwargs):
        for refusal in getattr(self, "refusals", ()):  # (a guard pickled by an older symopt has none)
            problem = refusal(self.model)
            if problem is not None:
                raise ValueError(f"{type(self.model).__name__}.save_pretrained: {problem}")
        if list_constraints(self.model):
            given = kwargs.get("state_dict")
            kwargs["state_dict"] = with_plain_values(self.model, self.model.state_dict() if given is None else given)
        return type(self.model).save_pretrained(self.model, *args, **kwargs)


def with_plain_values(model: nn.Module, state_dict: dict) -> dict:
    """``state_dict`` (of ``model``, constrained) with each constrained weight's current value added under its
    plain name (``layer.weight`` beside ``layer.parametrizations.weight.original0``, …): what a checkpoint of a
    constrained model holds so that an unconstrained reader (``from_pretrained``, a plain model's
    ``load_state_dict(strict=False)``) gets the values, and the constrained model its exact state.

    Args:
        model: the constrained model ``state_dict`` was taken from.
        state_dict: its state (keys as ``model.state_dict()`` names them).

    Returns:
        dict: a new dict, ``state_dict``'s entries and the values (detached); the constraints' entries are copies,
        since a group's state is one tensor under each member's key, and a writer such as ``transformers``'
        ``save_pretrained`` refuses tensors that share memory.

    Examples:
        >>> import torch, symopt
        >>> from symopt.attach import with_plain_values
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2))
        >>> _ = symopt.sparse(net, "0.weight", strength=1e-3)
        >>> state = with_plain_values(net, net.state_dict())
        >>> sorted(state)
        ['0.bias', '0.parametrizations.weight.original0', '0.parametrizations.weight.original1', '0.weight']
        >>> torch.equal(state["0.weight"], net[0].weight.detach())
        True
    """
    plain = {key: value.detach().clone() if ".parametrizations." in f".{key}" and isinstance(value, Tensor) else value
             for key, value in state_dict.items()}
    with torch.no_grad():
        for handle in list_constraints(model):
            for member in handle.members:
                plain[member.qualname] = member.value.detach()
    return plain


def guard_save_pretrained(model: nn.Module, refusal: Callable[[nn.Module], str | None] | None = None) -> None:
    """Install `_SavePretrainedGuard` on a Hugging Face-style model (one with ``save_pretrained`` and a
    ``config``), once; ``refusal`` (the model → why saving it plainly would lose something, or None) is
    checked at each save beside the constraints."""
    if not (hasattr(type(model), "save_pretrained") and getattr(model, "config", None) is not None):
        return
    guard = model.__dict__.get("save_pretrained")
    if not isinstance(guard, _SavePretrainedGuard):
        guard = model.__dict__["save_pretrained"] = _SavePretrainedGuard(model)
    if not hasattr(guard, "refusals"):
        guard.refusals = []
    if refusal is not None and refusal not in guard.refusals:
        guard.refusals.append(refusal)


def _constrain_several(model: nn.Module, names: list[str], group: Constraint) -> Handle:
    """Register a constraint that acts on several tensors (``multi_tensor``): the group validates
    them together (``validate_members``), then gives one parametrization per tensor (``member``),
    in order, and records each registered one (``bind``)."""
    owner = type(group).__name__
    targets = []
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{owner}: parameter names must be strings, got {name!r}")
        module, leaf = resolve(model, name)
        targets.append((name, module, leaf, _check_target(module, leaf, name)))
        _check_not_shared(model, module, leaf, name)
    group.validate_members([t[3] for t in targets], names)
    if len({(id(t[1]), t[2]) for t in targets}) != len(targets):
        raise ValueError(f"{owner}: a tensor cannot be constrained twice in one group; got {names}")
    tensor = targets[0][3]
    group.to(device=tensor.device, dtype=tensor.dtype)
    group.prepare(len(targets), tensor.device)
    done: list[tuple[nn.Module, str, Tensor]] = []
    try:
        # In the order given: a tie stores its later copies as differences to the first (the anchor).
        for index, (name, module, leaf, original) in enumerate(targets):
            _register(module, leaf, group.member(index), name)
            group.bind(module.parametrizations[leaf])
            done.append((module, leaf, original))
    except Exception:  # pragma: no cover - registration was validated; keep the model intact anyway
        for module, leaf, original in done:
            remove(module, leaf)
            with torch.no_grad():
                getattr(module, leaf).copy_(original)
        raise
    group.attached_to = ", ".join(names)
    return Handle(group, tuple(Member(n, m, leaf) for n, m, leaf, _ in targets))


def _register(module: nn.Module, leaf: str, parametrization: Constraint, qualname: str) -> None:
    value = getattr(module, leaf)
    parametrize.register_parametrization(module, leaf, parametrization)
    parametrization.attached_to = qualname
    # What an assignment must match from now on (Constraint.check_assignment): the shape, and the dtype
    # and device of an empty buffer, which model.to() / .double() convert along with the factors.
    parametrization.registered_shape = tuple(value.shape)
    parametrization.register_buffer("assign_like", value.detach().new_empty(0), persistent=False)
    mark_factors(module, leaf)
    if (leaf == "weight" and _takes_thin_factors(module) and "forward" not in vars(module)
            and type(parametrization).thin_factors is not Constraint.thin_factors):
        # (a forward set on the instance, by another library or by hand, is the user's: kept, W formed)
        module.forward = functools.partial(_factored_forward, module)
    if not getattr(module, _HOOK_FLAG, False):
        module.register_load_state_dict_pre_hook(_load_plain_checkpoint)
        setattr(module, _HOOK_FLAG, True)


def _linear_through(module: nn.Linear, input: Tensor, left: Tensor, right: Tensor, shape) -> Tensor:
    out = (input @ right) @ left.mT
    return out if module.bias is None else out + module.bias


def _conv_through(module: nn.modules.conv._ConvNd, input: Tensor, left: Tensor, right: Tensor, shape) -> Tensor:
    # weight (c_out, c_in, *k) = (L Rᵀ).reshape: a convolution with the r kernels Rᵀ.reshape(r, c_in, *k)
    # (the layer's own stride, padding, padding mode and dilation: its _conv_forward), then a 1 × 1 one
    # mixing the r channels with L, which adds the bias
    kernels = right.mT.reshape((right.shape[1],) + tuple(shape[1:]))
    hidden = module._conv_forward(input, kernels, None)
    mix = left.reshape(left.shape + (1,) * (hidden.dim() - 2))
    return _POINTWISE[hidden.dim() - 2](hidden, mix, module.bias)


def _embedding_through(module: nn.Embedding, input: Tensor, left: Tensor, right: Tensor, shape) -> Tensor | None:
    # the rows of W = L Rᵀ the indices pick are L's rows times Rᵀ: a gather of r numbers a token, no
    # vocabulary × dim matrix nor its dense gradient. None (the weight formed) where the layer does more
    # than pick rows: max_norm renormalises W's rows in place, a padding row's gradient is held at 0 (its
    # factors' would not be), sparse or frequency-scaled gradients are W's.
    if module.max_norm is not None or module.padding_idx is not None or module.sparse or module.scale_grad_by_freq:
        return None
    return nn.functional.embedding(input, left) @ right.mT


_THROUGH_FACTORS = {nn.Linear.forward: _linear_through, nn.Conv1d.forward: _conv_through,
                    nn.Conv2d.forward: _conv_through, nn.Conv3d.forward: _conv_through,
                    nn.Embedding.forward: _embedding_through}
_POINTWISE = {1: nn.functional.conv1d, 2: nn.functional.conv2d, 3: nn.functional.conv3d}


def _takes_thin_factors(module: nn.Module) -> bool:
    """Whether the layer's forward is torch's own ``nn.Linear`` / ``nn.ConvNd`` / ``nn.Embedding`` one (a
    subclass that changes how the weight is applied, e.g. a ``_conv_forward`` that standardises it, keeps
    its own); a convolution with groups = 1 (groups split the input channels, which the two-stage
    product does not)."""
    cls = type(module)
    if cls.forward not in _THROUGH_FACTORS:
        return False
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.groups == 1 and cls._conv_forward in _CONV_FORWARDS
    return True


_CONV_FORWARDS = (nn.Conv1d._conv_forward, nn.Conv2d._conv_forward, nn.Conv3d._conv_forward)


def _factored_forward(module: nn.Module, input: Tensor) -> Tensor:
    r"""The forward of an ``nn.Linear``, ``nn.Conv1d/2d/3d`` (groups = 1) or ``nn.Embedding`` whose weight's
    constraint has thin factors for this input (`Constraint.thin_factors`: low-rank factors, θ = L Rᵀ, whose
    two products cost less than θ formed for the input's rows, `_product_rows`): the output
    through the two factors, without forming the weight nor its gradient ($x R L^\top$; a convolution
    with r output channels then a 1 × 1 one; L's rows the indices pick, times $R^\top$). The weight is
    formed as usual (the class's forward) where the factors are not thin, where the layer's options
    need it (an embedding's ``max_norm``, ``padding_idx``, sparse gradients), where something watches
    the constraint's forward other than symopt's own hooks (any forward hook, a pre-hook not marked
    `acts_on_factors`: `symopt.regrow`, a user's hook) or where its strength policy reads θ's gradient on the coming backward pass
    (`Strength.reads_next_gradient`: ``"auto"``, a budget's reading step). A landing's pre-hook runs on
    the factors first, as it would before θ is formed; a budget between its readings counts the step
    when the backward pass reaches the output, as its gradient hook on θ would have (a pool's by its first
    tensor alone: `Strength.counts_unread_pass`)."""
    if parametrize.is_parametrized(module, "weight"):
        chain = module.parametrizations["weight"]
        constraint = chain[0]
        if (len(chain) == 1 and isinstance(constraint, Constraint) and _hooks_run_without_theta(constraint)
                and not constraint.policy.reads_next_gradient()):
            factors = factors_of(chain)
            thin = constraint.thin_factors(factors, _product_rows(module, input))
            if thin is not None:
                for hook in constraint._forward_pre_hooks.values():
                    hook(constraint, tuple(factors))  # (in place on the factors: acts_on_factors)
                out = _THROUGH_FACTORS[type(module).forward](module, input, *thin, constraint.registered_shape)
                if out is None:  # (the layer's options need W: formed below; the hooks above may run twice)
                    return type(module).forward(module, input)
                policy = constraint.policy
                if (constraint.watching and out.requires_grad and torch.is_grad_enabled()
                        and policy.counts_unread_pass(constraint)):
                    out.register_hook(lambda _grad: policy.observe_unread(constraint))
                return out
    return type(module).forward(module, input)


def _product_rows(module: nn.Module, input: Tensor) -> int:
    """How many rows of input the layer applies its weight's matrix view to (`Constraint.thin_factors`'
    cost model): a Linear's input rows, a convolution's output positions over the batch, an
    embedding's indices."""
    if isinstance(module, nn.Linear):
        return input.numel() // max(module.in_features, 1)
    if isinstance(module, nn.modules.conv._ConvNd):
        spatial = len(module.kernel_size)
        batch = input.shape[0] if input.dim() == spatial + 2 else 1
        positions = batch
        for axis in range(spatial):
            size = input.shape[input.dim() - spatial + axis]
            if module.padding == "same":
                positions *= size
                continue
            pad = 0 if module.padding == "valid" else module.padding[axis]
            span = module.dilation[axis] * (module.kernel_size[axis] - 1) + 1
            positions *= max((size + 2 * pad - span) // module.stride[axis] + 1, 0)
        return positions
    return input.numel()  # (an embedding: one row of the table per index)


def _hooks_run_without_theta(constraint: Constraint) -> bool:
    """Whether every hook on ``constraint``'s forward can do without θ formed: its only forward hook is
    the gradient watch (`watch_gradient`, whose step `observe_unread` counts), its pre-hooks change the
    factors in place (`acts_on_factors`: a landing), and no module-wide hook of torch's is installed."""
    return (list(constraint._forward_hooks.values()) == [watch_gradient]
            and not constraint._forward_pre_hooks_with_kwargs
            and all(getattr(hook, "acts_on_factors", False) for hook in constraint._forward_pre_hooks.values())
            and not torch_module._global_forward_hooks and not torch_module._global_forward_pre_hooks)


def factors_of(chain) -> list[Tensor]:
    """The factors ``torch.nn.utils.parametrize`` keeps (``original`` or ``original0, original1, ...``)."""
    if chain.is_tensor:
        return [chain.original]
    return [chain_original(chain, i) for i in range(chain.ntensors)]


def mark_factors(module: nn.Module, leaf: str) -> None:
    """Point each decayed factor at its constraint (``p._symopt_factor``): the decoupled-decay
    check and the weight-decay sync of ``strength="auto"`` find it there."""
    plist = module.parametrizations[leaf]
    for i in plist[0].decayed:
        factor = getattr(plist, f"original{i}")
        setattr(factor, _FACTOR_FLAG, plist[0])
        factor._symopt_slot = i  # which factor it is: a trimmed budget's decay mask depends on it


def is_factor(tensor: Tensor) -> bool:
    return getattr(tensor, _FACTOR_FLAG, None) is not None


def owner_of(tensor: Tensor) -> Constraint | None:
    """The constraint whose decayed factor ``tensor`` is (None for other tensors)."""
    return getattr(tensor, _FACTOR_FLAG, None)


def remove(module: nn.Module, leaf: str) -> None:
    """Remove the parametrization of ``module.<leaf>``, leaving its current value as a plain parameter.

    ``torch.nn.utils.parametrize`` keeps the parametrized property on a class created for the module,
    and ``copy.deepcopy`` shares that class between copy and original; removing on one would delete the
    property from both (the original then has no ``weight``). So the module first gets its own class.
    """
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    forward = module.__dict__.get("forward")
    if isinstance(forward, functools.partial) and forward.func is _factored_forward and leaf == "weight":
        del module.forward  # (the class's forward again)
    # parametrize decides Parameter vs buffer from requires_grad of the value, so grad mode must be on.
    with torch.enable_grad():
        parametrize.remove_parametrizations(module, leaf, leave_parametrized=True)


# -- discovery ---------------------------------------------------------------------------------
def _members(model: nn.Module) -> Iterator[Member]:
    for mod_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for leaf, plist in module.parametrizations.items():
            if isinstance(plist[0], Constraint):
                yield Member(f"{mod_name}.{leaf}" if mod_name else leaf, module, leaf)


def list_constraints(model: nn.Module) -> list[Handle]:
    """Handles of every symopt constraint registered in ``model`` (one per tie group), in module order.

    Args:
        model: any module; constraints are found in it and all its submodules.

    Returns:
        list[Handle]: empty when nothing is constrained (e.g. after [`symopt.finalize`][symopt.finalize]).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.

    Examples:
        >>> import torch, symopt
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
        >>> _ = symopt.sparse(net, "0.weight", strength=1e-3)
        >>> [(h.name, h.kind) for h in symopt.list_constraints(net)]
        [('0.weight', 'sparse')]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    # Keyed by the constraint object: a tie's members share their group and become one handle.
    found: dict[int, tuple[Constraint, list[Member]]] = {}
    for member in _members(model):
        mark_factors(member.module, member.tensor)  # deepcopy drops tensor attributes: re-flag
        p = member.parametrization
        owner = p.owner  # a tie's members share their group
        found.setdefault(id(owner), (owner, []))[1].append(member)
    # A tie's members in the order they were tied (the anchor first), whatever the module order.
    order = lambda m: m.parametrization.slot  # noqa: E731
    return [Handle(owner, tuple(sorted(members, key=order))) for owner, members in found.values()]


# -- plain checkpoints -------------------------------------------------------------------------
def _load_plain_checkpoint(module, state_dict, prefix, _metadata=None, _strict=True, _missing=None,
                           _unexpected=None, error_msgs=None) -> None:
    """Load ``prefix + 'weight'`` of an unconstrained checkpoint by assigning it (``right_inverse``).

    A checkpoint whose factors have other shapes than this model's (registered with other options)
    fails as torch fails it; the constraint's `Constraint.factor_shapes_hint` adds which option to
    change to ``error_msgs`` (torch raises them together at the end of ``load_state_dict``).

    Loading a plain value is the same as assigning it, ``module.weight = value``. For a tie,
    assigning one copy keeps the others' values (the anchor re-splits their differences, in place),
    so the copies of a tie can arrive in any order: from one module or several, and with the anchor
    before or after the others. The state_dict then carries the factors themselves, not copies, so
    that a copy loaded later in the same call still shifts them in place.
    """
    if not parametrize.is_parametrized(module):
        return
    for leaf, plist in module.parametrizations.items():
        parametrization = plist[0]
        plain_key = prefix + leaf
        base = f"{prefix}parametrizations.{leaf}."
        if isinstance(parametrization, Constraint) and error_msgs is not None:
            saved = [state_dict.get(f"{base}original{i}") for i in range(plist.ntensors)]
            saved = [t.shape for t in saved] if all(isinstance(t, Tensor) for t in saved) else None
            current = [getattr(plist, f"original{i}").shape for i in range(plist.ntensors)]
            if saved is not None and saved != current:
                hint = parametrization.factor_shapes_hint(saved, current)
                if hint is not None:
                    error_msgs.append(f"symopt: the factors of '{prefix}{leaf}' do not fit the checkpoint's: {hint}")
        if not isinstance(parametrization, Constraint) or plain_key not in state_dict:
            continue
        if base + "original0" in state_dict:
            # (a constrained model's checkpoint also holds the value under its plain name, `with_plain_values`, for
            # unconstrained readers: the factors are the exact state)
            if isinstance(state_dict[plain_key], Tensor) and state_dict[plain_key].shape == getattr(module, leaf).shape:
                del state_dict[plain_key]
            continue
        current = getattr(module, leaf)
        value = state_dict[plain_key]
        if not isinstance(value, Tensor) or value.shape != current.shape:
            continue  # leave it for load_state_dict's own shape / unexpected-key error
        del state_dict[plain_key]
        with torch.no_grad():
            setattr(module, leaf, value.to(device=current.device, dtype=current.dtype))
        for i in range(plist.ntensors):
            state_dict[f"{base}original{i}"] = getattr(plist, f"original{i}")
        for key, tensor in parametrization.state_dict(prefix=base + "0.", keep_vars=True).items():
            state_dict.setdefault(key, tensor)  # e.g. a tie's multiplier estimate, absent from a plain checkpoint
