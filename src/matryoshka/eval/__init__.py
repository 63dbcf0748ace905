"""Evaluation: quality, retention and cost of every prefix dimension."""
