"""Recipes that regenerate the shipped data, structures and model (see README.md here)."""
