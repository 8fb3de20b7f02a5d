"""Lightning callbacks for meta-learning, imported as ``lightning_meta.callbacks``."""

__all__: list[str] = []
