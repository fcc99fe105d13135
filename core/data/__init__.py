"""Text from the user's files, and the seeded calibration windows cut from it."""
