"""A run's reports: Parquet tables, terminal tables, a self-contained HTML page, and trends.

`write_reports` builds the Parquet files from a run directory; `load_summary` reads them back;
`batchroute.report.terminal`, `.html` and `.trend` present them (imported where used, so that
a run never pays for matplotlib).
"""

from batchroute.report.tables import ReportSummary, load_summary, write_reports

__all__ = ["ReportSummary", "load_summary", "write_reports"]
