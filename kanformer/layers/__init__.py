"""The FFN registry and every registered block (importing this package registers them all)."""

from . import baselines, bspline, chebyshev, fourier, jacobi, rational, rbf, wavelet  # noqa: F401  (register)
from .kan import KAN, KANFFN, Basis, KANLinear, get_basis_class, list_bases, register_basis
from .registry import FFN, create_ffn, get_ffn_class, list_ffns, register_ffn

__all__ = [
    "FFN", "KAN", "KANFFN", "Basis", "KANLinear", "create_ffn", "get_basis_class", "get_ffn_class",
    "list_bases", "list_ffns", "register_basis", "register_ffn",
]
