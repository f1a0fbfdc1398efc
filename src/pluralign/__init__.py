"""pluralign: learn from preference data where different people want different things."""

__version__ = "0.1.0"
