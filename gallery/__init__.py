"""The gallery: the core (errors, instance, store, recipe, files, images) and, on the top floor, the site.

The core modules import neither Flask nor torch; the site lives in ``gallery.web``.
"""
