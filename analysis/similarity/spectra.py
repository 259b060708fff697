"""Singular values of batches of small blocks, the per-pair cost of the CCA family and NBS.

The Gram and symmetric eigensolver run in torch, or, for float64 CPU blocks where torch's
LAPACK is Intel MKL on a non-Intel CPU, in numpy's OpenBLAS: MKL takes a generic code path
there, and OpenBLAS measured 1.8x faster for the [p, p] Gram and 1.5x for `eigvalsh` at
p = 512 (single thread, AMD EPYC). `IMPSWEEP_CPU_LAPACK` = "torch" | "numpy" overrides the
choice; both agree to round-off."""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

# Eigenvalues of the Gram B^T B carry an absolute error of about eps * lambda_max, so
# sqrt(lambda_i) is accurate while lambda_i / lambda_max stays above this ratio (the error of
# sigma_i is then below ~1e-10 sigma_max); blocks with smaller eigenvalues fall back to an SVD.
GRAM_RATIO = 1e-12

BACKEND_VARIABLE = "IMPSWEEP_CPU_LAPACK"
BACKENDS = ("auto", "torch", "numpy")


def _cpu_vendor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _numpy_blas() -> str:
    try:
        return str(np.show_config(mode="dicts")["Build Dependencies"]["lapack"]["name"])
    except (KeyError, TypeError):
        return ""


@functools.cache
def cpu_backend() -> str:
    """"numpy" or "torch": where float64 CPU Grams and eigensolves run (see the module doc)."""
    choice = os.environ.get(BACKEND_VARIABLE, "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"{BACKEND_VARIABLE}={choice!r} is not one of {', '.join(BACKENDS)}")
    if choice != "auto":
        return choice
    mkl_off_intel = torch.backends.mkl.is_available() and _cpu_vendor() not in ("", "GenuineIntel")
    return "numpy" if mkl_off_intel and "mkl" not in _numpy_blas().lower() else "torch"


def _on_numpy(blocks: torch.Tensor) -> bool:
    return (blocks.device.type == "cpu" and blocks.dtype == torch.float64
            and cpu_backend() == "numpy")


@contextmanager
def _torch_errors():
    """numpy's "did not converge" as torch.linalg.LinAlgError, what the kernels catch."""
    try:
        yield
    except np.linalg.LinAlgError as error:
        raise torch.linalg.LinAlgError(str(error)) from error


def _gram(blocks: torch.Tensor, left: bool) -> torch.Tensor:
    """B B^T (left) or B^T B, [B, a, a] or [B, b, b]."""
    if _on_numpy(blocks):
        array = blocks.numpy()
        swapped = array.transpose(0, 2, 1)
        return torch.from_numpy(np.matmul(array, swapped) if left else np.matmul(swapped, array))
    return blocks @ blocks.mT if left else blocks.mT @ blocks


def _eigh(gram: torch.Tensor, vectors: bool
          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eigenvalues ascending (and eigenvectors) of a batch of symmetric matrices; a solver
    that fails to converge raises torch.linalg.LinAlgError on either backend."""
    if _on_numpy(gram):
        with _torch_errors():
            if vectors:
                values, vecs = np.linalg.eigh(gram.numpy())
                return torch.from_numpy(values), torch.from_numpy(vecs)
            return torch.from_numpy(np.linalg.eigvalsh(gram.numpy())), None
    if vectors:
        return torch.linalg.eigh(gram)
    return torch.linalg.eigvalsh(gram), None


def thin_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, s, Vh) with k = min(n, p) columns, of one [n, p] matrix. Off Intel, OpenBLAS's SVD
    is faster than MKL's for wide matrices (1000 x 2048: 740 against 1000 ms, one thread) and
    slower for tall ones (16000 x 64: 36 against 23 ms), so only wide ones go to numpy."""
    if matrix.shape[-1] > matrix.shape[-2] and _on_numpy(matrix):
        with _torch_errors():
            u, s, vh = np.linalg.svd(matrix.numpy(), full_matrices=False)
        return torch.from_numpy(u), torch.from_numpy(s), torch.from_numpy(vh)
    return torch.linalg.svd(matrix, full_matrices=False)


def singular_values(blocks: torch.Tensor) -> torch.Tensor:
    """Singular values, non-increasing. blocks: [B, a, b] -> [B, min(a, b)].

    A symmetric eigensolver on the smaller Gram is about twice as fast as an SVD of the
    block; blocks whose spectrum reaches round-off (rank-deficient ones) use the SVD."""
    if blocks.shape[0] == 0 or min(blocks.shape[-2:]) == 0:
        return torch.linalg.svdvals(blocks)
    gram = _gram(blocks, left=blocks.shape[-1] > blocks.shape[-2])
    eigenvalues = _eigh(gram, vectors=False)[0].flip(-1)
    top = eigenvalues[:, :1]
    resolved = (eigenvalues[:, -1:] > GRAM_RATIO * top).squeeze(-1) & (top.squeeze(-1) > 0)
    values = eigenvalues.clamp_min(0.0).sqrt()
    if not bool(resolved.all()):
        values[~resolved] = torch.linalg.svdvals(blocks[~resolved])
    return values


def side_vectors(blocks: torch.Tensor, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular vectors of one side and the singular values, non-increasing.

    blocks: [B, a, b]; left: the a-side (left singular vectors, [B, a, k]) or the b-side
    ([B, b, k]), k = min(a, b). Eigenvectors of that side's Gram cost a third of an SVD;
    blocks whose k-th eigenvalue reaches round-off use the SVD."""
    k = min(blocks.shape[-2:])
    eigenvalues, vectors = _eigh(_gram(blocks, left), vectors=True)
    eigenvalues = eigenvalues.flip(-1)[:, :k]
    vectors = vectors.flip(-1)[:, :, :k]
    top = eigenvalues[:, 0]
    resolved = (eigenvalues[:, -1] > GRAM_RATIO * top) & (top > 0)
    values = eigenvalues.clamp_min(0.0).sqrt()
    if not bool(resolved.all()):
        u, s, vh = torch.linalg.svd(blocks[~resolved], full_matrices=False)
        vectors[~resolved] = u if left else vh.mT
        values[~resolved] = s
    return vectors, values
