"""The declarative catalogue shipped as package data: ``models/`` presets, ``tasks/`` cards."""
