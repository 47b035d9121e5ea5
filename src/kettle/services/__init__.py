"""The platform services, one OS process each."""
