"""The gallery: the Flask site, the store and recipes."""
