"""The authentication service: users, roles, passwords and login tokens."""
