"""Training: the LightningModule (loss, optimiser, schedule, metrics, EMA) and run callbacks (plots, predictions)."""
from vitlab.training.callbacks import PredictionWriter, RunPlots
from vitlab.training.module import ImageClassifier, warmup_cosine

__all__ = ["ImageClassifier", "RunPlots", "PredictionWriter", "warmup_cosine"]
