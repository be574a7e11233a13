"""chatnt core."""
