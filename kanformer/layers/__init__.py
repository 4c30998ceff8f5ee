"""The FFN registry and every registered block (importing this package registers them all).

Imports are explicit ``from .module import name`` lines: checkpoints carry this file (as ``kan_layers.py``) and its
siblings as self-contained modeling code, and transformers copies exactly the files named this way.
"""

from .baselines import MLP, SwiGLU
from .bspline import BSplineBasis, BSplineFFN
from .chebyshev import ChebyshevBasis, ChebyshevFFN
from .fourier import FourierBasis, FourierFFN
from .jacobi import JacobiBasis, JacobiFFN
from .kan import KAN, KANFFN, Basis, KANLinear, get_basis_class, list_bases, refresh_checks, register_basis
from .multkan import MultKANFFN
from .rational import GroupRational, RationalFFN
from .rbf import RBFFFN, RBFBasis
from .registry import FFN, KANModule, create_ffn, get_ffn_class, list_ffns, register_ffn, validate_ffn_options
from .wavelet import WaveletBasis, WaveletFFN

__all__ = [
    "FFN", "KAN", "KANFFN", "MLP", "Basis", "BSplineBasis", "BSplineFFN", "ChebyshevBasis", "ChebyshevFFN",
    "FourierBasis", "FourierFFN", "GroupRational", "JacobiBasis", "JacobiFFN", "KANLinear", "KANModule", "MultKANFFN",
    "RBFBasis", "RBFFFN", "RationalFFN", "SwiGLU", "WaveletBasis", "WaveletFFN", "create_ffn", "get_basis_class",
    "get_ffn_class", "list_bases", "list_ffns", "refresh_checks", "register_basis", "register_ffn",
    "validate_ffn_options",
]
