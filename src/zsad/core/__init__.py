"""What every layer may use: atomic writes (``io``), devices, precision and seeding (``runtime``), progress
bars (``progress``)."""
