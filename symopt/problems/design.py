r"""Products with a design matrix ``X`` that stay fast when ``X`` is sparse (torch CSR).

torch multiplies a CSR matrix by a vector at the speed of its stored entries, but ``X.t()`` of a
CSR matrix is a CSC view whose product runs ~100× slower on CPU (measured: 14 ms against 0.13 ms
for a 2000×20000 design with 4e5 entries). Autograd's backward of ``X @ θ`` is exactly that
product, $X^\top r$. So for a CSR ``X`` the product goes through `matvec`, whose backward multiplies
by a CSR copy of $X^\top$, built once per tensor and kept on it.

A dense ``X`` is left to torch, but for ``X @ θ`` with few non-zeros in θ (a Lasso's iterate, a
path's point), which reads only the columns of θ's support.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_TRANSPOSE = "_symopt_csr_transpose"  # the cached CSR copy of Xᵀ, an attribute of X itself
_COLUMN_SQUARES = "_symopt_column_squares"  # the columns' squared norms (`column_squares`), kept the same way
_ENTRY_ROWS = "_symopt_entry_rows"  # a CSR X's row of each stored entry (`columns`), kept the same way
_LAST_SELECTION = "_symopt_last_selection"  # a CSR X's last (index, X[:, index]) (`columns`), kept the same way
# Xᵀ as a SciPy CSR matrix (`columns` and `weighted_gram` on the CPU), kept the same way
_SCIPY_TRANSPOSE = "_symopt_scipy_transpose"
_HOST_SELECTION = "_symopt_host_selection"  # a CSR X's last (index, SciPy columns) (`host_columns`), kept the same way

# A CSR design's transpose and column selections on the CPU are built by SciPy's compiled CSR routines
# (csr_tocsc, row gathering), the results handed to torch as its own CSR tensors: torch builds them from its
# general operators (a sort, repeat_interleave, boolean masks), which on 1e5 entries took 7.3 ms for the
# transpose against SciPy's 1.8 ms, and 2.1–2.6 ms for a selection of 1042 of 5000 columns against 0.7 ms
# (measured on a 2-core Xeon; 1e6 entries: 74 against 34 ms, a fifth of the columns 21.6 against ~3 ms).
# Off (tests switch it off to run the torch route a GPU takes), or on other devices, torch builds them.
CSR_STRUCTURE_BY_SCIPY = True


def _row_pointers(counts: Tensor) -> Tensor:
    """CSR row pointers (``crow_indices``) from the number of stored entries per row."""
    pointers = counts.new_zeros(len(counts) + 1)
    torch.cumsum(counts, 0, out=pointers[1:])
    return pointers


def _entry_rows(X: Tensor) -> Tensor:
    """The row of each stored entry of a CSR ``X``, in its entry order."""
    crow = X.crow_indices()
    return torch.repeat_interleave(torch.arange(X.shape[0], device=crow.device), crow.diff())


def _csr_transpose(X: Tensor) -> Tensor:
    # Kept on the tensor, so it lives exactly as long as X; `Problem.data_on` makes a new tensor
    # for a new dtype or device, which gets its own copy. The data of a problem is never mutated.
    cached = getattr(X, _TRANSPOSE, None)
    if cached is None:
        cached = _transpose_by_scipy(X) if _by_scipy(X) else _transpose_by_torch(X)
        setattr(X, _TRANSPOSE, cached)
    return cached


def _transpose_by_scipy(X: Tensor) -> Tensor:
    """Xᵀ of a CPU CSR ``X`` by SciPy's ``csr_tocsc`` (rows stay sorted within each column); SciPy's own copy is
    kept on X for `columns`."""
    host = _as_scipy(X).T.tocsr()
    setattr(X, _SCIPY_TRANSPOSE, host)
    return _from_scipy(host)


def _transpose_by_torch(X: Tensor) -> Tensor:
    """Xᵀ of a CSR ``X`` from torch's operators (any device)."""
    # A stable sort of the column indices is the transpose's entry order (rows stay sorted within
    # each column): faster than X.t().to_sparse_csr() (1.0 vs 1.6 s at 2e7 entries, measured).
    cols = X.col_indices()
    order = torch.sort(cols, stable=True).indices
    rows = _entry_rows(X)
    new_crow = _row_pointers(torch.bincount(cols, minlength=X.shape[1]))
    return torch.sparse_csr_tensor(new_crow, rows[order], X.values()[order], size=(X.shape[1], X.shape[0]),
                                   check_invariants=False)  # built from a valid CSR: valid


def _by_scipy(X: Tensor) -> bool:
    """Whether a CSR ``X``'s structure is built by SciPy (see `CSR_STRUCTURE_BY_SCIPY`)."""
    return CSR_STRUCTURE_BY_SCIPY and X.device.type == "cpu" and X.dtype in (torch.float32, torch.float64)


def _as_scipy(X: Tensor):
    """A CPU CSR tensor as a SciPy ``csr_matrix`` (SciPy copies the indices where it narrows them to int32)."""
    import scipy.sparse

    return scipy.sparse.csr_matrix((X.values().detach().numpy(), X.col_indices().numpy(), X.crow_indices().numpy()),
                                   shape=tuple(X.shape))


def _from_scipy(M) -> Tensor:
    """A SciPy CSR matrix as a torch CSR tensor with int64 indices (torch's own index type)."""
    return torch.sparse_csr_tensor(torch.from_numpy(M.indptr.astype("int64", copy=False)),
                                   torch.from_numpy(M.indices.astype("int64", copy=False)), torch.from_numpy(M.data),
                                   size=M.shape, check_invariants=False)  # (SciPy's canonical CSR: valid)


class _CsrProduct(torch.autograd.Function):
    r"""``X @ θ`` for a constant CSR ``X``; the gradient $X^\top g$ uses the cached CSR transpose."""

    @staticmethod
    def forward(ctx, X: Tensor, theta: Tensor) -> Tensor:
        ctx.X = X
        return X @ theta

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, _csr_transpose(ctx.X) @ grad


# ``X @ θ`` through θ's support (dense X on the CPU, no gradient asked for) when the support is at
# most this share of θ and, for a row-major X, at most SPARSE_PRODUCT_COLUMNS columns: gathering a
# column of a row-major X touches a cache line per row. Measured on a 500×2000 design (loops of
# 300 products): full product 190–210 µs; row-major selection 31 / 77 / 153 / 259 µs at 5 / 20 / 50 /
# 100 non-zeros; column-major 21 / 30 / 34 / 74 µs (92 at 250). Inside a solve, where other work
# evicts X from the cache between products, the full row-major product took 0.4 ms.
SPARSE_PRODUCT_SHARE = 0.125
SPARSE_PRODUCT_COLUMNS = 48


def _is_column_major(X: Tensor) -> bool:
    return X.stride(0) == 1 and (X.shape[1] <= 1 or X.stride(1) == X.shape[0])


def matvec(X: Tensor, theta: Tensor) -> Tensor:
    """``X @ θ`` (θ a vector or a matrix), differentiable in θ; for a CSR ``X`` its backward avoids
    torch's slow transposed-CSR product.

    Examples:
        >>> import torch
        >>> X = torch.tensor([[0.0, 2.0], [1.0, 0.0]], dtype=torch.float64).to_sparse_csr()
        >>> theta = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
        >>> matvec(X, theta).sum().backward()
        >>> theta.grad.tolist()                                   # Xᵀ 1 = column sums
        [1.0, 2.0]
    """
    if X.layout == torch.sparse_csr:
        # (autograd's Function only where a gradient is asked for: its call cost a Newton–CG product ~10 µs)
        return _CsrProduct.apply(X, theta) if theta.requires_grad and torch.is_grad_enabled() else X @ theta
    if (theta.dim() == 1 and X.dim() == 2 and X.device.type == "cpu" and X.shape[1] >= 64
            and not (theta.requires_grad and torch.is_grad_enabled())):
        # (autograd would need Xᵀg on every entry, not only the support's: never with a gradient)
        support = theta.nonzero().squeeze(1)
        if support.numel() <= SPARSE_PRODUCT_SHARE * theta.numel():
            if _is_column_major(X):  # (whole columns are contiguous rows of Xᵀ)
                return theta.index_select(0, support) @ X.t().index_select(0, support)
            if support.numel() <= SPARSE_PRODUCT_COLUMNS:
                return X.index_select(1, support) @ theta.index_select(0, support)
    return X @ theta


def rmatvec(X: Tensor, r: Tensor) -> Tensor:
    r"""$X^\top r$ (not differentiated), through the cached CSR transpose for a CSR ``X``.

    Examples:
        >>> import torch
        >>> X = torch.tensor([[0.0, 2.0], [1.0, 0.0]], dtype=torch.float64).to_sparse_csr()
        >>> rmatvec(X, torch.tensor([1.0, 3.0], dtype=torch.float64)).tolist()
        [3.0, 2.0]
    """
    if X.layout == torch.sparse_csr:
        return _csr_transpose(X) @ r
    return X.t() @ r


def squared_rmatvec(X: Tensor, h: Tensor) -> Tensor:
    r"""$(X ⊙ X)^\top h$: the columns' squared norms weighted by ``h`` (the diagonal of $X^\top \mathrm{diag}(h) X$),
    through the cached CSR transpose's entries for a CSR ``X``.

    Examples:
        >>> import torch
        >>> X = torch.tensor([[0.0, 2.0], [1.0, 3.0]], dtype=torch.float64)
        >>> h = torch.tensor([1.0, 0.5], dtype=torch.float64)
        >>> squared_rmatvec(X, h).tolist(), squared_rmatvec(X.to_sparse_csr(), h).tolist()
        ([0.5, 8.5], [0.5, 8.5])
    """
    if X.layout == torch.sparse_csr:
        rows = _csr_transpose(X)
        squared = torch.sparse_csr_tensor(rows.crow_indices(), rows.col_indices(), rows.values().square(),
                                          size=rows.shape, check_invariants=False)  # (the same valid pattern)
        return squared @ h
    return X.square().t() @ h


def column_squares(X: Tensor) -> Tensor:
    r"""$\sum_i X_{ij}^2$ for every column $j$ (dense or CSR), computed once and kept on ``X``: a least-squares
    model's curvature diagonal on any columns is a constant times these (`symopt.problems.glm.DataTerm.
    curvature_product`), where squaring the model's columns again cost 4 ms a model of 3000 × 1100 (a tenth of a
    Lasso's solve, measured).

    Examples:
        >>> import torch
        >>> X = torch.tensor([[0.0, 2.0], [1.0, 3.0]], dtype=torch.float64)
        >>> column_squares(X).tolist(), column_squares(X.to_sparse_csr()).tolist()
        ([1.0, 13.0], [1.0, 13.0])
    """
    cached = getattr(X, _COLUMN_SQUARES, None)
    if cached is None:
        if X.layout == torch.sparse_csr:
            cached = squared_rmatvec(X, torch.ones(X.shape[0], dtype=X.dtype, device=X.device))
        else:  # (once a design: its squared copy is transient)
            cached = X.square().sum(0)
        setattr(X, _COLUMN_SQUARES, cached)
    return cached


def weighted_gram(Z: Tensor, h: Tensor) -> Tensor:
    r"""$Z^\top \mathrm{diag}(h) Z$ as a dense matrix. A CSR ``Z`` is multiplied sparse by sparse: its columns'
    products touch only their shared rows (a 10000 × 800 block of a design of density 1e-3: 3–12 ms, where
    the dense product of its dense copy took 150 ms, measured).

    Examples:
        >>> import torch
        >>> Z = torch.tensor([[1.0, 0.0], [2.0, 3.0]], dtype=torch.float64)
        >>> h = torch.tensor([1.0, 0.5], dtype=torch.float64)
        >>> weighted_gram(Z, h).tolist(), weighted_gram(Z.to_sparse_csr(), h).tolist()
        ([[3.0, 3.0], [3.0, 4.5]], [[3.0, 3.0], [3.0, 4.5]])
    """
    if Z.layout != torch.sparse_csr:
        return Z.mT @ (h[:, None] * Z)
    if _by_scipy(Z) and h.device.type == "cpu" and h.dtype == Z.dtype:
        return _weighted_gram_by_scipy(Z, h)
    scaled = torch.sparse_csr_tensor(Z.crow_indices(), Z.col_indices(), Z.values() * h[_entry_rows(Z)], size=Z.shape,
                                     check_invariants=False)  # (Z's own valid pattern)
    return (_csr_transpose(Z) @ scaled).to_dense()


def _weighted_gram_by_scipy(Z: Tensor, h: Tensor) -> Tensor:
    """`weighted_gram` of a CPU CSR ``Z`` by SciPy's sparse product and its dense copy: torch's sparse-by-sparse
    product and ``to_dense`` took 6.5 ms for a 1000 × 851 block of 9511 entries against SciPy's 2.1, 49 against 19
    ms at 6000 × 2000 with 6e4 entries, and the same within 10% where both are under a millisecond (a 2-core Xeon).
    Its result equalled torch's to the bit on the five shapes measured (not a guarantee: the two need not add an
    entry's products in the same order)."""
    import scipy.sparse

    host = _as_scipy(Z)
    weights = h.detach().numpy()
    scaled = scipy.sparse.csr_matrix((host.data * np.repeat(weights, np.diff(host.indptr)), host.indices,
                                      host.indptr), shape=host.shape)
    return torch.from_numpy((_scipy_transpose(Z, _csr_transpose(Z)) @ scaled).toarray())


# A CSR column selection holding at least this share of X's entries keeps X's entries in those columns (a pass over
# X) rather than transposing the selection's rows of Xᵀ: 2700 of 4000 columns of a 6000 × 4000 design of 1.2e5
# entries 3.3 → 1.4 ms, 2273 of 10000 (40 000 entries, 23% of them selected) 0.64 → 0.34 ms; for 4700 of 100000
# columns (5% of 1e6 entries) the pass took 11 ms against 1.9 (measured).
MASKED_SELECTION_SHARE = 0.15


def columns(X: Tensor, index: Tensor) -> Tensor:
    """``X[:, index]``, dense or CSR (torch has no column selection for CSR: the rows of the cached
    CSR transpose are gathered instead, and kept as the new matrix's own transpose).

    Examples:
        >>> import torch
        >>> X = torch.tensor([[0.0, 2.0, 5.0], [1.0, 0.0, 6.0]], dtype=torch.float64)
        >>> columns(X.to_sparse_csr(), torch.tensor([2, 0])).to_dense().tolist()
        [[5.0, 0.0], [6.0, 1.0]]
    """
    if X.layout != torch.sparse_csr:
        # (column-major: whole columns are contiguous rows of Xᵀ; index_select(1) of a column-major
        # tensor gathers entry by entry, 3.4 ms against 0.03 ms for 50 columns of 500×2000, measured)
        return X.t().index_select(0, index).t() if _is_column_major(X) else X.index_select(1, index)
    # The last selection is kept on X and given again for the same columns: the log-loss's Newton models take the
    # same candidates at several outer iterations (its curvature's weights change, not its columns): 78 selections
    # of a sparse logistic-L1's solve, 56 ms of 0.18 s (measured). A CSR selection costs its entries only.
    last = _kept_for(X, _LAST_SELECTION, index)
    if last is not None:
        return last
    rows = _csr_transpose(X)  # (d, n): the columns of X are its rows
    picked, selected = _selection_by_scipy(X, rows, index) if _by_scipy(X) else _selection_by_torch(X, rows, index)
    setattr(selected, _TRANSPOSE, picked)
    return _keep_for(X, _LAST_SELECTION, index, selected)


def _kept_for(X: Tensor, key: str, index: Tensor):
    """What is kept on ``X`` under ``key`` for the columns ``index`` (`_keep_for`), or None: kept for other columns,
    or nothing kept."""
    last = getattr(X, key, None)
    if last is not None and last[0].shape == index.shape and torch.equal(last[0], index):
        return last[1]
    return None


def _keep_for(X: Tensor, key: str, index: Tensor, value):
    """Keep ``value`` on ``X`` under ``key`` for the columns ``index`` (the last one only) and return it."""
    setattr(X, key, (index.clone(), value))
    return value


# A CPU CSR design's columns of at most HOST_PRODUCT_ENTRIES stored entries are multiplied by SciPy on NumPy
# arrays (`host_columns`): a curvature product, Zᵀ(h ⊙ Zv), costs torch ~15 µs a call for its three operators
# before any arithmetic, and a products model asks 10-400 of them. One product, torch against SciPy on a 2-core
# Xeon (µs): 1132 entries 28 / 12, 6644 entries 39 / 19, 20694 entries (20000 × 1042) 166 / 64; from ~45 000
# entries torch's two threads win (46786: 134 / 136, 60117: 77 / 123).
HOST_PRODUCT_ENTRIES = 20_000
# ... or at most HOST_ENTRIES_PER_ROW per row of X, where that is more: torch's products grow with the rows however
# few entries (the length-n vectors' operators and its row-parallel kernel; at 10 000 entries 45-51 µs from 1000
# rows, 125-141 from 20000, 168-255 from 100000), SciPy's less (24, 40-43, 79-88), so on a tall design SciPy wins
# well beyond 20 000 entries. One product Zᵀ(h ⊙ Zv), torch / SciPy on the 2-core Xeon, random
# columns of 5, 20 and 80 entries (µs): 20000 rows, 40 000 entries 141-204 / 104-203; 80 000 entries 239-344 /
# 194-438 (mixed: beyond the rule); 100000 rows, 160 000 entries 742-756 / 433-480; 1000 and 5000 rows, 40 000
# entries 59-94 / 66-193 (torch's: the rule leaves them at 20 000).
HOST_ENTRIES_PER_ROW = 2


def host_columns(X: Tensor, index: Tensor):
    """``(Zᵀ, Z)`` for the columns ``Z = X[:, index]`` of a CPU CSR ``X`` whose structure goes by SciPy
    (`CSR_STRUCTURE_BY_SCIPY`) and that hold at most `HOST_PRODUCT_ENTRIES` stored entries (or `HOST_ENTRIES_PER_ROW`
    per row of X, where that is more), as SciPy matrices:
    Zᵀ a ``(len(index), n)`` CSR matrix (the rows of Xᵀ, gathered) and Z its CSC view (no copy); None otherwise
    (`columns` then). Their products take and give NumPy arrays. The last one is kept on X and given again for
    the same columns (a log-loss's models take the same candidates at several outer iterations).

    Examples:
        >>> import numpy as np, torch
        >>> X = torch.tensor([[0.0, 2.0, 5.0], [1.0, 0.0, 6.0]], dtype=torch.float64).to_sparse_csr()
        >>> Zt, Z = host_columns(X, torch.tensor([2, 0]))
        >>> (Z @ np.array([1.0, 1.0])).tolist(), (Zt @ np.array([1.0, 1.0])).tolist()   # Z1, Zᵀ1
        ([5.0, 7.0], [11.0, 1.0])
    """
    if X.layout != torch.sparse_csr or not _by_scipy(X) or index.device.type != "cpu":
        return None
    last = _kept_for(X, _HOST_SELECTION, index)
    if last is not None:
        return last
    transpose = _scipy_transpose(X, _csr_transpose(X))
    picked = index.numpy()
    pointers = transpose.indptr
    if int((pointers[picked + 1] - pointers[picked]).sum()) > max(HOST_PRODUCT_ENTRIES, HOST_ENTRIES_PER_ROW * X.shape[0]):
        return None
    rows = transpose[picked]
    return _keep_for(X, _HOST_SELECTION, index, (rows, rows.T))


def _selection_by_scipy(X: Tensor, rows: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """``(X[:, index]ᵀ, X[:, index])`` of a CPU CSR ``X`` (``rows``: its transpose) by SciPy's row gathering and
    ``csr_tocsc``; the gathered SciPy matrix is kept on the selection as its own SciPy transpose (for
    `weighted_gram`)."""
    gathered = _scipy_transpose(X, rows)[index.numpy()]  # (len(index), n): the selection's transpose
    selected = _from_scipy(gathered.T.tocsr())
    setattr(selected, _SCIPY_TRANSPOSE, gathered)
    return _from_scipy(gathered), selected


def _scipy_transpose(X: Tensor, rows: Tensor):
    """Xᵀ of a CPU CSR ``X`` as a SciPy CSR matrix (``rows``: Xᵀ as a torch tensor): the one kept on X, or ``rows``
    converted and kept there (a transpose built by torch, with `CSR_STRUCTURE_BY_SCIPY` off at the time)."""
    host = getattr(X, _SCIPY_TRANSPOSE, None)
    if host is None:
        host = _as_scipy(rows)
        setattr(X, _SCIPY_TRANSPOSE, host)
    return host


def _selection_by_torch(X: Tensor, rows: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """``(X[:, index]ᵀ, X[:, index])`` of a CSR ``X`` (``rows``: its transpose) from torch's operators (any
    device): the selection's rows of Xᵀ gathered, and transposed, or X's entries in those columns kept."""
    crow, cols, values = rows.crow_indices(), rows.col_indices(), rows.values()
    first, lengths = crow[index], crow[index + 1] - crow[index]
    new_crow = _row_pointers(lengths)
    # entry j of the selection sits at first[row] + (j − new_crow[row]) in the original rows
    offset = torch.repeat_interleave(first - new_crow[:-1], lengths)
    take = torch.arange(int(new_crow[-1]), device=crow.device) + offset
    picked = torch.sparse_csr_tensor(new_crow, cols[take], values[take], size=(len(index), X.shape[0]),
                                     check_invariants=False)  # built from a valid CSR: valid
    if take.numel() >= MASKED_SELECTION_SHARE * values.numel() and bool((index[1:] > index[:-1]).all()):
        return picked, _masked_columns(X, index)
    return picked, picked.t().to_sparse_csr()


def _masked_columns(X: Tensor, index: Tensor) -> Tensor:
    """``X[:, index]`` of a CSR ``X`` (``index`` sorted, no repeats) by keeping its entries in the index's
    columns, row by row: a pass over X's entries."""
    rows = getattr(X, _ENTRY_ROWS, None)
    if rows is None:  # (kept on X as its transpose is)
        rows = _entry_rows(X)
        setattr(X, _ENTRY_ROWS, rows)
    renamed = torch.full((X.shape[1],), -1, dtype=torch.int64, device=index.device)
    renamed[index] = torch.arange(len(index), device=index.device)
    new_columns = renamed[X.col_indices()]
    kept = new_columns >= 0
    counts = torch.bincount(rows[kept], minlength=X.shape[0])
    return torch.sparse_csr_tensor(_row_pointers(counts), new_columns[kept], X.values()[kept],
                                   size=(X.shape[0], len(index)), check_invariants=False)  # (rows stay sorted)


def forget_kept(X: Tensor) -> None:
    """Drops what symopt keeps on a design tensor (its CSR transpose; a small dense design's Gram,
    `symopt.problems.glm`): a repeated solve on the same data then pays what a first one does (the
    benchmarks' repeats time first solves).

    Examples:
        >>> import torch
        >>> X = torch.tensor([[0.0, 2.0], [1.0, 0.0]], dtype=torch.float64).to_sparse_csr()
        >>> _ = rmatvec(X, torch.ones(2, dtype=torch.float64))   # builds and keeps Xᵀ
        >>> forget_kept(X); hasattr(X, _TRANSPOSE)
        False
    """
    for name in [name for name in vars(X) if name.startswith("_symopt_")]:
        delattr(X, name)
