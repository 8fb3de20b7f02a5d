"""Meta-learners: one LightningModule per method on the shared MetaLearner base."""

__all__: list[str] = []
