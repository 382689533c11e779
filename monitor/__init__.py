"""The monitor: aggregates SLA state from every host for Nagios."""
