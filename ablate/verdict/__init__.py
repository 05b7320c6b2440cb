"""From the two tables to a verdict: the decision rules (decide, with the statistics in stats), diagnostics
(overoptimization, length bias), the report (terminal and report.md) and its plots."""
