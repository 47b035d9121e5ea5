"""File crypto: the schemas data owners encrypt their files with."""
