"""The admin dashboard's page, script, style sheet and icon (SPEC §8), served by
account_manager.routes.dashboard. A package only so that they ship as package data."""
