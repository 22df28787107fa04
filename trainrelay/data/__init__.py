"""Data stages: acquire (synthetic | binance | files), manifest, segments."""
