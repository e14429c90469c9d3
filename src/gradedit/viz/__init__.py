"""Plots (matplotlib, the ``plot`` extra) and self-contained HTML reports."""
