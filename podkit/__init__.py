"""podkit: scale-aware detectors, fast in production."""
