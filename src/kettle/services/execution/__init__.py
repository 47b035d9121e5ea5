"""The execution service: a client of the scheduler that runs one task at a time in a worker process."""
