"""The ``kettle`` command line."""
