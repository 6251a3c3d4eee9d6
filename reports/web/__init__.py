"""The static compatibility site, derived from the store only.

``data`` is the pure page data (plain dicts in, plain dicts out), ``charts`` the build-time
SVG, ``render`` the Jinja2 writer, ``exports`` the machine-readable files (``matrix.json`` and
its schema, shields.io endpoint badges, the Atom feed), ``publish`` the one adapter that reads
the store and swaps a finished site into place.
"""
