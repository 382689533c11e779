"""Lifeboat core: configuration, repository format, schedule/retention/SLA maths, server bootstrap."""
