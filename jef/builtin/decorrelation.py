"""Built-in decorrelation functionals (variance, covariance, cross-correlation) over the global batch."""
