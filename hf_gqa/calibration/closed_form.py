"""The activation init: each new key/value head fitted in closed form to the heads it replaces, on calibration data.

Pure tensor math over one attention block. The inputs are second moments of the projections' inputs, `C = X^T X`
with a constant 1 appended to X (so biases are one more weight column), gathered on calibration text; weights are
`(rows, n_in + 1)` with the bias as the last column. Nothing here knows a model family.

Values. A group's new value head `v = X W'^T` should reproduce each old head `v_h` up to a linear map `R_h`
(`v_h ~ v R_h`), measured through the output projection of the query heads that read `v_h` (the error that reaches
the residual stream). That is a weighted PCA: the top-d principal subspace of `[v_1 L_1, ..., v_k L_k]`, with
`L_h L_h^T = sum_i W_o,i^T W_o,i`. The map is compensated exactly where it can be: `W_o,i <- W_o,i R_h^T`.

Keys. The same, measured through the queries (`L_h L_h^T` = the second moment of the queries reading head h),
compensated in the queries (`W_q,i <- R_h W_q,i`). Where keys are rotated by RoPE only maps that commute with the
rotation can move into the queries: in each 2-D frequency plane a complex scale. transformers' `rotate_half` pairs dim
j with dim j + r/2 (r the rotary dims), so plane j is the complex number `x_j + i x_(j + r/2)`. Per plane the new key
is the best rank-1 complex approximation of the group's keys weighted by their queries' energy in that plane, and each
query head takes the conjugate of its key head's complex scale. Dims past the rotary ones form one general block.

A group of one head gives back that head (the fit is exact), so converting without pooling is the identity.
"""

import torch

EPS = 1e-6


def augment(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`(rows, n_in)` weight and optional bias -> `(rows, n_in + 1)`, float64."""
    column = bias[:, None] if bias is not None else weight.new_zeros(weight.shape[0], 1)
    return torch.cat([weight, column], dim=1).double()


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    """A square root L of a symmetric PSD matrix (L L^T = m), regularised so that it is invertible."""
    m = (m + m.T) / 2
    scale = m.diagonal().mean().clamp_min(1e-30)
    values, vectors = torch.linalg.eigh(m + EPS * scale * torch.eye(len(m), dtype=m.dtype))
    return vectors * values.clamp_min(EPS * scale).sqrt()


def _fit_maps(new: torch.Tensor, heads: list[torch.Tensor], cov: torch.Tensor) -> list[torch.Tensor]:
    """`R_h` with `X heads[h]^T ~ X new^T R_h` (least squares over the calibration rows), `(d, d)` each."""
    gram = new @ cov @ new.T
    gram = gram + EPS * gram.diagonal().mean().clamp_min(1e-30) * torch.eye(len(gram), dtype=gram.dtype)
    return [torch.linalg.solve(gram, new @ cov @ w.T) for w in heads]


def general_block(heads: list[torch.Tensor], metrics: list[torch.Tensor], cov: torch.Tensor):
    """One shared head for `heads` (each `(d, n)`), error weighted by `metrics` (each `(d, d)`, PSD).

    Returns the new head `(d, n)` and the maps `R_h` (`(d, d)`) with `X heads[h]^T ~ X new^T R_h`."""
    d = heads[0].shape[0]
    roots = [_sqrt_psd(m) for m in metrics]
    projected = [w.T @ r for w, r in zip(heads, roots, strict=True)]  # (n, d): X @ this = v_h L_h
    stacked = torch.cat(projected, dim=1)  # (n, k d)
    gram = stacked.T @ cov @ stacked  # (k d, k d) = Z^T Z
    _, vectors = torch.linalg.eigh((gram + gram.T) / 2)
    top = vectors[:, -d:].flip(1)  # (k d, d), the leading principal directions
    new = (stacked @ top).T  # (d, n)
    return new, _fit_maps(new, heads, cov)


def rope_planes(heads: list[torch.Tensor], energies: list[torch.Tensor], cov: torch.Tensor, rotary: int):
    """One shared key head over the rotary dims: per plane the best complex rank-1 fit, weighted by `energies`
    (per head, `(rotary // 2,)`: its queries' energy in each plane). Returns the new rows `(rotary, n)` and each
    head's complex scales `(rotary // 2,)` with `z_h ~ c_h z` plane by plane."""
    half = rotary // 2
    n = heads[0].shape[1]
    new = heads[0].new_zeros(rotary, n)
    scales = [torch.zeros(half, dtype=torch.complex128) for _ in heads]
    covc = cov.to(torch.complex128)
    for j in range(half):
        z = torch.stack([w[j] + 1j * w[j + half] for w in heads])  # (k, n) complex weight rows
        s = z.conj() @ covc @ z.T  # (k, k): s[a, b] = z_a^H C z_b
        e = torch.stack([en[j] for en in energies]).clamp_min(0).sqrt().to(torch.complex128)
        m = e[:, None] * s * e[None, :]
        _, vectors = torch.linalg.eigh((m + m.conj().T) / 2)
        alpha = e * vectors[:, -1]
        shared = alpha @ z  # (n,) complex
        norm = (shared.conj() @ covc @ shared).real
        if norm <= 0:
            shared, norm = z[0], (z[0].conj() @ covc @ z[0]).real
        for h in range(len(heads)):
            scales[h][j] = (shared.conj() @ covc @ z[h]) / norm.clamp_min(1e-30)
        new[j], new[j + half] = shared.real, shared.imag
    return new, scales


def scale_query_planes(rows: torch.Tensor, scales: torch.Tensor, rotary: int) -> torch.Tensor:
    """A query head's rows `(d, n)` with plane j multiplied by `conj(scales[j])` (the key's scale moved over)."""
    half = rotary // 2
    out = rows.clone()
    z = (rows[:half] + 1j * rows[half:rotary]) * scales.conj()[:, None]
    out[:half], out[half:rotary] = z.real, z.imag
    return out


__all__ = ["augment", "general_block", "rope_planes", "scale_query_planes"]
