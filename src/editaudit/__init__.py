"""editaudit: find, read and mitigate knowledge edits in LLM checkpoints.

The package is the headless core (library + CLI). It never imports the Textual
front end, which lives in the separate ``editaudit_tui`` package.
"""

__version__ = "0.1.0"
