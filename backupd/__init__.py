"""The backup worker of one backup host."""
