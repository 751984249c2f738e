"""The built-in sensor emulator: drivetrain vibration signals (signal.py)."""
