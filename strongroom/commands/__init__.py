"""Command groups of the ``strongroom`` CLI that live outside strongroom/cli.py."""
