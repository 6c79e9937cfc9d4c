"""Training: the LightningModule (loss, optimiser, schedule, metrics, EMA) and run callbacks (plots, predictions)."""
from vitlab.training.callbacks import PredictionWriter, RunPlots
from vitlab.training.module import ImageClassifier
from vitlab.training.optim import warmup_cosine
from vitlab.training.settings import Distill, Evaluation, Finetune, Optim, Regularization, Schedule, Speed

__all__ = ["ImageClassifier", "RunPlots", "PredictionWriter", "warmup_cosine", "Optim", "Schedule", "Regularization",
           "Finetune", "Evaluation", "Speed", "Distill"]
