"""Tests of normlab.experiments."""
