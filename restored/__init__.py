"""The restore worker of one backup host."""
