"""The management service: functions, tasks and their state machine; stages invoked tasks."""
