"""Shared pytest fixtures. Server fixtures live in tests/_servers.py."""
