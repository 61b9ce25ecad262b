"""Helpers shared by the tests (plain functions; fixtures live in the conftest files)."""
