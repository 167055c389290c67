"""Package data: the model price and context-window table (see scripts/update_prices.py)."""
