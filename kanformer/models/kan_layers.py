"""The layer library as the model files import it. In a saved checkpoint this file is replaced by a flat copy of
``kanformer/layers/__init__.py`` (see ``common.write_portable_code``), so the model files import the same names in
both places."""

from ..layers import FFN, Basis, KANModule, create_ffn, get_ffn_class, refresh_checks  # noqa: F401
