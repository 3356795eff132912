"""Renderers of benchmark pages: ``render(data, page) -> markdown``, figures beside ``page``."""
