"""Insights: analytics over a time window, CSAT results and the staffing forecast."""
