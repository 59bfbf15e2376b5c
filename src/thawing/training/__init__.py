"""The training loop and what it needs: stages, learning-rate schedules, optimizer."""
