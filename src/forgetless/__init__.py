"""forgetless: continual fine-tuning of causal LMs with replay (MSSR, GeRe and baselines)."""

__version__ = "0.1.0"
