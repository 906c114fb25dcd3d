"""Automatic checkers for the exercises of each chapter (one module per chapter, built on rlcore.exercises)."""
