"""Tests of the admin dashboard (SPEC §8): the page in a real headless Chromium, its headers and files,
the hourly counts behind its chart, and the event stream it reads."""
