"""CSAT: survey settings, low-score follow-ups and the customer's rating page."""
