"""Tests of the Pulumi program, run under `pulumi.runtime.set_mocks` (no cloud, no CLI)."""
