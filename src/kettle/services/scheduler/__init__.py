"""The scheduler service: hands staged tasks to execution nodes under leases, delivers
cancels, and records statuses and results (``spec/platform.md`` §7, Kettle deviations §12)."""
