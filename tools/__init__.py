"""Scripts that build what ships in filters/models and filters/langid_codes.py from ../shared/data.

They are not part of the installed package: run them from a checkout, as `python -m tools.NAME`.
"""
