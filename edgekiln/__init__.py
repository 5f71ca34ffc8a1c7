"""edgekiln: trained vision models in, validated edge artifacts out."""

__version__ = "0.1.0"
