from replenish.forecasting.absence import Absences
from replenish.forecasting.model import (
    Forecast,
    LevelReading,
    RatePrior,
    ReadingSeries,
    forecast_depletion,
    split_cycles,
)

__all__ = ["Absences", "Forecast", "LevelReading", "RatePrior", "ReadingSeries", "forecast_depletion", "split_cycles"]
