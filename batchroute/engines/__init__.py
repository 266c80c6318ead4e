"""Engines that run a job: `local` runs it in this process."""
