"""The headless command line (typer). ``editaudit --help`` lists the commands."""
