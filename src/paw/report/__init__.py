"""Results files, summaries and figures for experiments."""

from paw.report.summary import comparison_markdown, write_reports

__all__ = ["comparison_markdown", "write_reports"]
