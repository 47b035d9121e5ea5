"""The access-control service: may this role category call this frontend API (``spec/platform.md`` §3.1)?"""
