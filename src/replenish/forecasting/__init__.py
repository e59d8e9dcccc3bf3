from replenish.forecasting.model import Forecast, LevelReading, forecast_depletion, split_cycles

__all__ = ["Forecast", "LevelReading", "forecast_depletion", "split_cycles"]
