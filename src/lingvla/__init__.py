"""lingvla: LingBot-VLA policies - train, serve and evaluate."""

__version__ = "0.1.0"
