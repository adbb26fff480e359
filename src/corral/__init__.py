"""corral: an auto-wrangling rules engine for render farms."""

__version__ = "0.1.0"
