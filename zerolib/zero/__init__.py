"""The ZeRO optimizer path: partitioned optimizer state, gradient reduction, loss scaling."""
from zerolib.zero.loss_scaler import DynamicLossScaler, LossScaleStuckError, scaler_from_config
from zerolib.zero.optimizer import NonFiniteGradientError, StepReport, ZeroOptimizer, ZeroSettings

__all__ = ["DynamicLossScaler", "LossScaleStuckError", "NonFiniteGradientError", "scaler_from_config", "StepReport",
           "ZeroOptimizer", "ZeroSettings"]
