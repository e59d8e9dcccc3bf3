from replenish.forecasting.model import Forecast, LevelReading, ReadingSeries, forecast_depletion, split_cycles

__all__ = ["Forecast", "LevelReading", "ReadingSeries", "forecast_depletion", "split_cycles"]
