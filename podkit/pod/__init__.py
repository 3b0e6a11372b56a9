"""POD: Global Scale Learner, learned scales, scale decomposition into FD networks."""
