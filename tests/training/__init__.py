"""Tests of normlab.training."""
