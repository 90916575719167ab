"""The Textual front end of editaudit: a client of the headless core."""
