"""Training: the fit loop, calibration, evaluation and reports (see each module's docstring)."""

from inspectline.training.evaluation import Evaluation, evaluate_predictor
from inspectline.training.loop import FitResult, fit
from inspectline.training.report import write_report
from inspectline.training.run import TrainingRun, load_data, run_training, train_model

__all__ = [
    "Evaluation",
    "FitResult",
    "TrainingRun",
    "evaluate_predictor",
    "fit",
    "load_data",
    "run_training",
    "train_model",
    "write_report",
]
