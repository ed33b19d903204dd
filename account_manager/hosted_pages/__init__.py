"""The hosted pages' templates and style sheet (the login page and /device), shipped in the package."""
