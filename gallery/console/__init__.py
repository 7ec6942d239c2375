"""The command line's commands, by area; ``cli.py`` gathers them into one group."""
