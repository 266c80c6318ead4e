"""Money: the price table and its sources, the cost formula, the token estimate, the forecast
and the budget. No module outside this package computes a price."""
