from replenish.forecasting.model import (
    Forecast,
    LevelReading,
    RatePrior,
    ReadingSeries,
    forecast_depletion,
    split_cycles,
)

__all__ = ["Forecast", "LevelReading", "RatePrior", "ReadingSeries", "forecast_depletion", "split_cycles"]
